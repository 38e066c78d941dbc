"""The `mito` command line: `mito worker [OPTIONS]` (PROTOCOL §10.4) and `mito demo`.

Flags only override what the user actually typed; every value is validated by
`mito_trio.config.load_config`, so a bad flag fails with the same one-line message as a bad
file entry. The worker and demo modules are imported only when their command runs, which
keeps `--help` fast.
"""

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

import attrs
import platformdirs
from cyclopts import App, Parameter
from cyclopts.exceptions import CycloptsError

from mito_trio import __version__
from mito_trio.config import ConfigError, WorkerConfig, load_config
from mito_trio.exitcodes import EXIT_CODE_HELP, ExitCode

__all__ = ["WorkerFlags", "app", "build_worker_config", "main", "overrides_from_flags"]

app = App(
    name="mito",
    help="A Mitosis worker on Trio, wire-compatible with the Mitosis coordinator 0.6.x.",
    version=f"mito-trio {__version__}",
    version_flags=["-V", "--version"],
    help_flags=["-h", "--help"],
    help_format="plaintext",
    # Switches are plain: a flag can only turn a boolean on (§10.4), so no `--no-x` forms.
    default_parameter=Parameter(negative="", show_default=False),
)

_Text = str | None
_List = tuple[str, ...]


def _list_flag(long: str, short: str, metavar: str, text: str) -> Parameter:
    return Parameter(name=[long, short], consume_multiple=True, metavar=metavar, help=text)


@attrs.frozen(kw_only=True)
class WorkerFlags:
    """The options of `mito worker`; attribute names are config keys, except `config`."""

    config: Annotated[
        _Text,
        Parameter(
            name="--config",
            metavar="PATH",
            help="Config file (default: config.toml, searched upward from here).",
        ),
    ] = None
    coordinator_addr: Annotated[
        _Text,
        Parameter(
            name=["--coordinator", "-c"],
            metavar="URL",
            help="Coordinator URL (default: http://127.0.0.1:5000).",
        ),
    ] = None
    polling_interval: Annotated[
        _Text,
        Parameter(
            name="--polling-interval",
            metavar="DUR",
            help="Wait between task fetches when idle, and before retries (default: 3m).",
        ),
    ] = None
    heartbeat_interval: Annotated[
        _Text,
        Parameter(
            name="--heartbeat-interval",
            metavar="DUR",
            help="Interval between heartbeats (default: 5m).",
        ),
    ] = None
    credential_path: Annotated[
        _Text,
        Parameter(
            name="--credential-path",
            metavar="PATH",
            help="Credential file (default: <config dir>/mitosis/credentials).",
        ),
    ] = None
    user: Annotated[
        _Text,
        Parameter(name=["--user", "-u"], metavar="NAME", help="User to log in as."),
    ] = None
    password: Annotated[
        _Text,
        Parameter(
            name=["--password", "-p"],
            metavar="PW",
            allow_leading_hyphen=True,
            help="Password of the user (prefer MITO_PASSWORD or the config file).",
        ),
    ] = None
    groups: Annotated[
        _List,
        _list_flag(
            "--groups",
            "-g",
            "GROUP[:ROLE],...",
            "Groups that may send tasks, e.g. g1,g2:write,g3:read (role defaults to write).",
        ),
    ] = ()
    tags: Annotated[
        _List,
        _list_flag(
            "--tags", "-t", "TAG,...", "Capabilities; a task runs here if its tags are among them."
        ),
    ] = ()
    labels: Annotated[
        _List,
        _list_flag("--labels", "-l", "LABEL,...", "Free-form labels to find this worker by."),
    ] = ()
    log_path: Annotated[
        _Text,
        Parameter(name="--log-path", metavar="PATH", help="Log file path (with --file-log)."),
    ] = None
    file_log: Annotated[
        bool,
        Parameter(name="--file-log", help="Also write the log to a file."),
    ] = False
    shared_log: Annotated[
        bool,
        Parameter(
            name="--shared-log",
            help="Use a daily-rotated log file shared by several workers.",
        ),
    ] = False
    lifetime: Annotated[
        _Text,
        Parameter(
            name="--lifetime",
            metavar="DUR",
            help="Lifetime of the worker's registration, e.g. 7d or 1year.",
        ),
    ] = None
    retain: Annotated[
        bool,
        Parameter(name="--retain", help="On login, keep the user's other tokens valid."),
    ] = False
    skip_redis: Annotated[
        bool,
        Parameter(name="--skip-redis", help="Do not connect to Redis."),
    ] = False
    drain_timeout: Annotated[
        _Text,
        Parameter(
            name="--drain-timeout",
            metavar="DUR",
            help="How long a running task may finish after the first stop signal (default: 0s).",
        ),
    ] = None
    artifact_compression: Annotated[
        _Text,
        Parameter(
            name="--artifact-compression",
            metavar="LEVEL",
            help="gzip level for artifacts, 0 (none) to 9 (default: 1).",
        ),
    ] = None
    request_timeout: Annotated[
        _Text,
        Parameter(
            name="--request-timeout",
            metavar="DUR",
            help="Timeout of each request to the coordinator (default: 30s).",
        ),
    ] = None


def overrides_from_flags(flags: WorkerFlags) -> dict[str, object]:
    """The config values the user gave on the command line, keyed by config key.

    Unset options, switches left off and empty lists are not overrides (§10.4); list
    options are split at commas.
    """
    given: dict[str, object] = {}
    for field in attrs.fields(WorkerFlags):
        value = getattr(flags, field.name)
        if field.name == "config" or value is None or value is False:
            continue
        if isinstance(value, tuple):
            items = [item.strip() for entry in value for item in entry.split(",")]
            value = [item for item in items if item]
            if not value:
                continue
        given[field.name] = value
    return given


def _load(
    flags: WorkerFlags, *, env: Mapping[str, str], cwd: Path, user_config_dir: Path
) -> WorkerConfig:
    return load_config(
        cli=overrides_from_flags(flags),
        config_file=flags.config,
        env=env,
        cwd=cwd,
        user_config_dir=user_config_dir,
    )


def build_worker_config(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, user_config_dir: Path
) -> WorkerConfig:
    """The configuration `mito worker <argv>` would run with, without running anything.

    Raises CycloptsError for unparsable options and ConfigError for invalid values.
    """
    _, bound, _ = app.parse_args(["worker", *argv], exit_on_error=False, print_error=False)
    flags = bound.arguments.get("flags", WorkerFlags())
    return _load(flags, env=env, cwd=cwd, user_config_dir=user_config_dir)


@app.command(name="worker", help_epilogue=EXIT_CODE_HELP)
def worker(*, flags: Annotated[WorkerFlags, Parameter(name="*")] = WorkerFlags()) -> int:
    """Run a worker: register with the coordinator, then fetch and run tasks until stopped."""
    try:
        config = _load(
            flags,
            env=os.environ,
            cwd=Path.cwd(),
            user_config_dir=Path(platformdirs.user_config_dir()),
        )
    except ConfigError as err:
        print(f"mito worker: {err}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    from mito_trio.worker import run_worker_from_config

    return run_worker_from_config(config)


@app.command(name="demo")
def demo() -> int:
    """Run a short self-contained demonstration of the worker."""
    from mito_trio.demo import run_demo

    return run_demo()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `mito` console script; always ends with SystemExit."""
    tokens = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(tokens, exit_on_error=False, print_error=False, result_action="return_value")
    except CycloptsError as err:
        prog = "mito worker" if tokens[:1] == ["worker"] else "mito"
        message = " ".join(str(err).split())
        print(f"{prog}: {message} (see {prog} --help)", file=sys.stderr)
        code = ExitCode.CONFIG_ERROR
    raise SystemExit(0 if code is None else code)
