"""Where Redis is and how to log in: the registration's `redis_url` (§3.3, §8.1)."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote

import attrs

__all__ = ["DEFAULT_PORT", "RedisURL", "parse_redis_url"]

DEFAULT_PORT = 6379


@attrs.frozen
class RedisURL:
    """Where Redis is and how to log in. `masked()` is the form fit for logs."""

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    db: int = 0

    def masked(self) -> str:
        """The URL with the password replaced by `***`."""
        auth = ""
        if self.username is not None or self.password is not None:
            user = quote(self.username or "", safe="")
            auth = f"{user}:***@" if self.password is not None else f"{user}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{auth}{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisURL:
    """Parse the registration's `redis_url` (§3.3, §8.1); ValueError if it is not usable.

    The coordinator formats the password into the URL without escaping it, and writes IPv6
    hosts without brackets (`redis://u:p@::1:6379/`), so this parser is lenient: the user
    info ends at the last `@`, the port is what follows the last `:`. `protocol=resp3` and
    other query parameters are ignored (RESP2 is used). Error messages never contain the URL.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() != "redis":
        raise ValueError("only redis:// URLs are supported")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        hostpart = rest
    end = min((i for i in (hostpart.find(c) for c in "/?#") if i >= 0), default=len(hostpart))
    authority, tail = hostpart[:end], hostpart[end:]
    host, port = _split_host_port(authority)

    username: str | None = None
    password: str | None = None
    if at:
        name, colon, secret = userinfo.partition(":")
        username = unquote(name) or None
        password = unquote(secret) if colon else None
        if password == "":
            password = None

    path, _, query = tail.partition("?")
    path = path.partition("#")[0].strip("/")
    db = 0
    if path:
        if not path.isdigit():
            raise ValueError("the database in the URL path must be a number")
        db = int(path)
    for name, value in parse_qsl(query.partition("#")[0]):
        if name == "db" and value.isdigit():
            db = int(value)
    return RedisURL(host=host, port=port, username=username, password=password, db=db)


def _split_host_port(authority: str) -> tuple[str, int]:
    if not authority:
        raise ValueError("the URL has no host")
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("the URL has a malformed IPv6 host")
        port_text = rest[1:]
    elif ":" in authority:
        host, _, port_text = authority.rpartition(":")
    else:
        host, port_text = authority, ""
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("the URL has an invalid port")
    return host, int(port_text)
