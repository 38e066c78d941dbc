"""Getting a user token at start-up: cached credential, else login (PROTOCOL.md §3.1, §3.2)."""

from __future__ import annotations

import getpass
import logging
import sys
from pathlib import Path

import trio

from .client import CoordinatorClient
from .credentials import Credential, read_credential, store_credential
from .errors import CoordinatorError, Transient

log = logging.getLogger(__name__)


class MissingCredentials(Exception):
    """No user or password configured, and no terminal to ask on."""


async def _ask(prompt: str, *, secret: bool) -> str:
    def read() -> str:
        return getpass.getpass(prompt) if secret else input(prompt)

    return await trio.to_thread.run_sync(read)


async def obtain_user_token(
    client: CoordinatorClient,
    *,
    credential_path: Path,
    user: str | None,
    password: str | None,
    retain: bool,
    interactive: bool | None = None,
) -> str:
    """A valid user token: the cached one if `GET /auth` accepts it, else a fresh login.

    The login honours `retain` (the original always sends false, which logs out every other
    session of the user). Missing user or password are asked for only on a terminal.
    """
    cached = read_credential(credential_path, user)
    if cached is not None:
        try:
            name = await client.auth(cached.token)
        except Transient:
            raise
        except CoordinatorError as exc:
            log.info("cached credential of %s not accepted (%s); logging in", cached.username, exc)
        else:
            if name == cached.username:
                log.info("using the cached credential of %s", name)
                return cached.token
            log.info("cached credential belongs to %s, not %s; logging in", name, cached.username)

    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    if user is None or password is None:
        if not interactive:
            missing = "user" if user is None else "password"
            raise MissingCredentials(
                f"no {missing} configured and no terminal to ask on: set it with "
                f"--{missing}, MITO_{missing.upper()} or `{missing}` in the [worker] config"
            )
        if user is None:
            user = (await _ask("Username: ", secret=False)).strip()
        else:
            print(f"Username: {user}")
        if password is None:
            password = await _ask("Password: ", secret=True)

    token = await client.login(user, password, retain=retain)
    try:
        store_credential(credential_path, Credential(user, token))
    except OSError as exc:
        log.warning("cannot save the credential to %s: %s", credential_path, exc)
    log.info("logged in as %s", user)
    return token
