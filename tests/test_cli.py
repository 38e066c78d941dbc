"""The `mito` command line: flags, help, version, errors and hand-over to the worker."""

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from cyclopts.exceptions import CycloptsError

from mito_trio import __version__
from mito_trio.cli import WorkerFlags, build_worker_config, main, overrides_from_flags
from mito_trio.config import ConfigError, WorkerConfig
from mito_trio.exitcodes import EXIT_CODE_HELP, ExitCode

REPO = Path(__file__).resolve().parents[1]

# Every flag of PROTOCOL §10.4 plus ours, with its short form if any.
FLAGS = {
    "--config": None,
    "--coordinator": "-c",
    "--polling-interval": None,
    "--heartbeat-interval": None,
    "--credential-path": None,
    "--user": "-u",
    "--password": "-p",
    "--groups": "-g",
    "--tags": "-t",
    "--labels": "-l",
    "--log-path": None,
    "--file-log": None,
    "--shared-log": None,
    "--lifetime": None,
    "--retain": None,
    "--skip-redis": None,
    "--drain-timeout": None,
    "--artifact-compression": None,
    "--request-timeout": None,
}


def run_mito(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `mito ARGS` in a fresh interpreter, the way the console script does."""
    clean = {key: value for key, value in os.environ.items() if not key.upper().startswith("MITO_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    clean["XDG_CONFIG_HOME"] = str(cwd / "xdg")
    clean["COLUMNS"] = "200"
    clean.update(env or {})
    code = "import sys; from mito_trio.cli import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def build(argv: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> WorkerConfig:
    return build_worker_config(argv, env=env or {}, cwd=tmp_path, user_config_dir=tmp_path / "xdg")


# --- flags to config --------------------------------------------------------------------------


def test_no_flags_means_no_overrides() -> None:
    assert overrides_from_flags(WorkerFlags()) == {}


def test_lists_split_at_commas_and_repeat() -> None:
    flags = WorkerFlags(groups=("g1,g2:write", "g3", " g4 , ,"), tags=(), labels=("",))
    assert overrides_from_flags(flags) == {"groups": ["g1", "g2:write", "g3", "g4"]}


def test_every_flag_reaches_the_config(tmp_path: Path) -> None:
    config = build(
        [
            "-c", "http://coord:5000",
            "--polling-interval", "1m",
            "--heartbeat-interval", "2m",
            "--credential-path", "creds",
            "-u", "alice",
            "-p", "-s3cret",
            "-g", "g1,g2:write", "-g", "g3",
            "-t", "gpu", "a100",
            "-l", "rack1,row2",
            "--log-path", "w.log",
            "--file-log",
            "--shared-log",
            "--lifetime", "7d",
            "--retain",
            "--skip-redis",
            "--drain-timeout", "30s",
            "--artifact-compression", "9",
            "--request-timeout", "10s",
        ],
        tmp_path,
    )  # fmt: skip
    assert config == WorkerConfig(
        coordinator_addr="http://coord:5000",
        polling_interval=60,
        heartbeat_interval=120,
        credential_path=tmp_path / "creds",
        user="alice",
        password="-s3cret",
        groups=("g1", "g2:write", "g3"),
        tags=("gpu", "a100"),
        labels=("rack1", "row2"),
        log_path=tmp_path / "w.log",
        file_log=True,
        shared_log=True,
        lifetime=604800,
        retain=True,
        skip_redis=True,
        drain_timeout=30,
        artifact_compression=9,
        request_timeout=10,
    )


def test_long_forms(tmp_path: Path) -> None:
    config = build(
        ["--coordinator", "https://c", "--user", "u", "--password", "pw", "--groups", "g",
         "--tags", "t", "--labels", "l"],
        tmp_path,
    )  # fmt: skip
    assert (config.coordinator_addr, config.user, config.password) == ("https://c", "u", "pw")
    assert (config.groups, config.tags, config.labels) == (("g",), ("t",), ("l",))


def test_flags_only_override_when_given(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[worker]\nfile_log = true\ntags = ["from-file"]\nuser = "file-user"\n'
    )
    config = build(["--skip-redis"], tmp_path)
    assert config.file_log is True
    assert config.tags == ("from-file",)
    assert config.user == "file-user"
    assert config.skip_redis is True


def test_precedence_through_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "xdg" / "mitosis").mkdir(parents=True)
    (tmp_path / "xdg" / "mitosis" / "config.toml").write_text(
        '[worker]\nuser = "user-dir"\npassword = "user-dir"\nlifetime = "1d"\n'
        'polling_interval = "1m"\n'
    )
    (tmp_path / "custom.toml").write_text(
        '[worker]\nuser = "file"\npassword = "file"\nlifetime = "2d"\n'
        '[global]\npolling_interval = "9m"\n'
    )
    config = build(
        ["--config", "custom.toml", "-u", "flag", "--polling-interval", "3m"],
        tmp_path,
        env={"MITO_USER": "env", "MITO_PASSWORD": "env"},
    )
    assert config.user == "flag"  # flag > env
    assert config.password == "env"  # env > file
    assert config.lifetime == 2 * 86400  # --config file > user config dir
    assert config.polling_interval == 9 * 60  # [global] > flag


def test_bad_flag_value_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build(["--polling-interval", "60"], tmp_path)
    assert caught.value.source == "flag --polling-interval"


def test_unknown_flag_is_a_parse_error(tmp_path: Path) -> None:
    with pytest.raises(CycloptsError):
        build(["--no-such-flag"], tmp_path)


def test_switches_have_no_negative_form(tmp_path: Path) -> None:
    with pytest.raises(CycloptsError):
        build(["--no-file-log"], tmp_path)


# --- the worker and demo commands -------------------------------------------------------------


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in-process commands in an empty directory with no MITO_ variables."""
    for name in list(os.environ):
        if name.upper().startswith("MITO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_worker_command_hands_the_config_to_the_worker(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[WorkerConfig] = []

    def run_worker_from_config(config: WorkerConfig) -> int:
        received.append(config)
        return ExitCode.UNREACHABLE

    fake = types.ModuleType("mito_trio.worker")
    fake.run_worker_from_config = run_worker_from_config  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mito_trio.worker", fake)
    monkeypatch.setenv("MITO_TAGS", "[gpu]")
    (isolated / "xdg" / "mitosis").mkdir(parents=True)
    (isolated / "xdg" / "mitosis" / "config.toml").write_text('[worker]\nuser = "xdg-user"\n')

    with pytest.raises(SystemExit) as exited:
        main(["worker", "-c", "http://h:1", "--drain-timeout", "5s"])

    assert exited.value.code == ExitCode.UNREACHABLE
    assert received == [
        WorkerConfig(coordinator_addr="http://h:1", user="xdg-user", tags=("gpu",), drain_timeout=5)
    ]


def test_worker_command_config_error(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mito_trio.worker", None)  # importing it would fail
    monkeypatch.setenv("MITO_POLLING_INTERVAL", "60")

    with pytest.raises(SystemExit) as exited:
        main(["worker"])

    assert exited.value.code == ExitCode.CONFIG_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        'mito worker: invalid polling_interval "60" from environment variable'
        ' MITO_POLLING_INTERVAL: expected a duration string such as "30s", "5m", "1h 30m"\n'
    )


def test_demo_command(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("mito_trio.demo")
    fake.run_demo = lambda: 5  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mito_trio.demo", fake)
    with pytest.raises(SystemExit) as exited:
        main(["demo"])
    assert exited.value.code == 5


# --- the real process -------------------------------------------------------------------------


def test_worker_help_lists_every_flag_and_the_exit_codes(tmp_path: Path) -> None:
    result = run_mito("worker", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for long, short in FLAGS.items():
        assert long in text
        if short is not None:
            assert f"{long} {short}" in text
    for line in EXIT_CODE_HELP.splitlines():
        assert line in text
    assert "--no-file-log" not in text
    assert "--empty-tags" not in text
    assert "[default:" not in text


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_top_level_help(tmp_path: Path, flag: str) -> None:
    result = run_mito(flag, cwd=tmp_path)
    assert result.returncode == 0
    assert "worker" in result.stdout
    assert "demo" in result.stdout


def test_help_does_not_import_the_worker(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from mito_trio.cli import main\n"
        "try:\n    main(['worker', '--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('mito_trio.worker', 'mito_trio.demo', 'trio') "
        "if m in sys.modules), file=sys.stderr)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.stderr.strip() == "[]"


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(tmp_path: Path, flag: str) -> None:
    result = run_mito(flag, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"mito-trio {__version__}\n"


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["worker", "--polling-interval", "60"], 'mito worker: invalid polling_interval "60"'),
        (["worker", "--artifact-compression", "11"], "mito worker: invalid artifact_compression"),
        (["worker", "-c", "nowhere"], 'mito worker: invalid coordinator_addr "nowhere"'),
        (["worker", "--config", "missing.toml"], 'mito worker: invalid config "missing.toml"'),
        (["worker", "--bogus"], "mito worker: Unknown option: --bogus"),
        (["worker", "--lifetime"], "mito worker: "),
        (["nonsense"], "mito: Unknown command"),
    ],
)
def test_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], start: str) -> None:
    result = run_mito(*args, cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert result.stdout == ""
    assert result.stderr.startswith(start)
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_toml_error_exits_2(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[worker\n")
    result = run_mito("worker", cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert result.stderr.startswith(
        f"mito worker: {tmp_path / 'config.toml'}: invalid TOML at line 1"
    )
    assert result.stderr.count("\n") == 1
