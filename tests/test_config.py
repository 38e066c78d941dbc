"""Configuration sources, their precedence, value checks and error messages (PROTOCOL §10)."""

from collections.abc import Mapping
from pathlib import Path

import attrs
import pytest

from mito_trio.config import ConfigError, WorkerConfig, load_config, parse_env_value


@attrs.define
class Layout:
    """A user config dir and a project tree; the worker runs in project/a/b."""

    root: Path

    @property
    def user_config_dir(self) -> Path:
        return self.root / "xdg"

    @property
    def user_file(self) -> Path:
        return self.user_config_dir / "mitosis" / "config.toml"

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def cwd(self) -> Path:
        return self.project / "a" / "b"

    def write(self, path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def load(
        self,
        *,
        cli: Mapping[str, object] | None = None,
        config_file: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> WorkerConfig:
        return load_config(
            cli=cli or {},
            config_file=config_file,
            env=env or {},
            cwd=cwd or self.cwd,
            user_config_dir=self.user_config_dir,
        )

    def error(self, **kwargs: object) -> ConfigError:
        with pytest.raises(ConfigError) as caught:
            self.load(**kwargs)  # type: ignore[arg-type]
        message = str(caught.value)
        assert "\n" not in message
        return caught.value


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    result = Layout(tmp_path)
    result.cwd.mkdir(parents=True)
    return result


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_without_any_source(layout: Layout) -> None:
    config = layout.load()
    assert config == WorkerConfig()
    assert config.coordinator_addr == "http://127.0.0.1:5000"
    assert config.polling_interval == 180.0
    assert config.heartbeat_interval == 300.0
    assert config.credential_path is None
    assert config.user is None
    assert config.password is None
    assert config.groups == config.tags == config.labels == ()
    assert config.log_path is None
    assert not (config.file_log or config.shared_log or config.retain or config.skip_redis)
    assert config.lifetime is None
    assert config.drain_timeout == 0.0
    assert config.artifact_compression == 1
    assert config.request_timeout == 30.0


def test_repr_hides_the_password() -> None:
    config = WorkerConfig(user="alice", password="hunter2")
    assert "hunter2" not in repr(config)
    assert "alice" in repr(config)
    assert "password='***'" in repr(config)
    assert "password=None" in repr(WorkerConfig())


def test_config_is_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        WorkerConfig().user = "x"  # type: ignore[misc]


# --- precedence -------------------------------------------------------------------------------


def test_user_config_dir_beats_defaults(layout: Layout) -> None:
    layout.write(layout.user_file, '[worker]\npolling_interval = "1m"\nuser = "u"\n')
    config = layout.load()
    assert config.polling_interval == 60
    assert config.user == "u"


def test_config_file_beats_user_config_dir(layout: Layout) -> None:
    layout.write(layout.user_file, '[worker]\npolling_interval = "1m"\nuser = "u"\n')
    layout.write(layout.project / "config.toml", '[worker]\npolling_interval = "2m"\n')
    config = layout.load()
    assert config.polling_interval == 120
    assert config.user == "u"  # keys merge one by one


def test_env_beats_config_file(layout: Layout) -> None:
    layout.write(layout.project / "config.toml", '[worker]\npolling_interval = "2m"\n')
    config = layout.load(env={"MITO_POLLING_INTERVAL": "4m"})
    assert config.polling_interval == 240


def test_cli_beats_env(layout: Layout) -> None:
    config = layout.load(
        env={"MITO_POLLING_INTERVAL": "4m", "MITO_TAGS": "[a]"},
        cli={"polling_interval": "5m"},
    )
    assert config.polling_interval == 300
    assert config.tags == ("a",)


def test_global_table_beats_cli_and_env(layout: Layout) -> None:
    layout.write(
        layout.project / "config.toml",
        '[worker]\npolling_interval = "2m"\n[global]\npolling_interval = "7m"\n',
    )
    config = layout.load(env={"MITO_POLLING_INTERVAL": "4m"}, cli={"polling_interval": "5m"})
    assert config.polling_interval == 420


def test_global_of_the_config_file_beats_global_of_the_user_file(layout: Layout) -> None:
    layout.write(layout.user_file, '[global]\nuser = "from-user-file"\nretain = true\n')
    layout.write(layout.project / "config.toml", '[global]\nuser = "from-config-file"\n')
    config = layout.load(cli={"user": "from-flag"})
    assert config.user == "from-config-file"
    assert config.retain is True


def test_default_table_is_lowest_and_inert(layout: Layout) -> None:
    # As in the original, the built-in defaults sit above [default], so it never applies,
    # and its values are not even checked.
    layout.write(
        layout.project / "config.toml",
        '[default]\npolling_interval = "1m"\nuser = "d"\nheartbeat_interval = 60\n',
    )
    config = layout.load()
    assert config.polling_interval == 180
    assert config.user is None
    assert config.heartbeat_interval == 300


def test_only_the_winning_value_is_checked(layout: Layout) -> None:
    config = layout.load(env={"MITO_POLLING_INTERVAL": "60"}, cli={"polling_interval": "1m"})
    assert config.polling_interval == 60


def test_lists_are_replaced_not_merged(layout: Layout) -> None:
    layout.write(layout.project / "config.toml", '[worker]\ntags = ["a", "b"]\n')
    assert layout.load(env={"MITO_TAGS": "[c]"}).tags == ("c",)


def test_other_profiles_and_unknown_keys_are_ignored(layout: Layout) -> None:
    layout.write(
        layout.project / "config.toml",
        'title = "shared"\n'
        '[coordinator]\nbind = "0.0.0.0:5000"\n'
        '[client]\nuser = "client-user"\n'
        '[worker]\nno_such_key = 1\nuser = "w"\n',
    )
    assert layout.load().user == "w"


# --- finding the config file ------------------------------------------------------------------


def test_config_toml_is_searched_upward(layout: Layout) -> None:
    layout.write(layout.project / "config.toml", '[worker]\nuser = "top"\n')
    assert layout.load().user == "top"


def test_nearest_config_toml_wins(layout: Layout) -> None:
    layout.write(layout.project / "config.toml", '[worker]\nuser = "top"\n')
    layout.write(layout.project / "a" / "config.toml", '[worker]\nuser = "near"\n')
    assert layout.load().user == "near"


def test_explicit_relative_config_is_searched_upward(layout: Layout) -> None:
    layout.write(layout.project / "conf" / "worker.toml", '[worker]\nuser = "conf"\n')
    layout.write(layout.project / "config.toml", '[worker]\nuser = "default-name"\n')
    assert layout.load(config_file="conf/worker.toml").user == "conf"


def test_explicit_absolute_config(layout: Layout) -> None:
    path = layout.write(layout.root / "elsewhere" / "w.toml", '[worker]\nuser = "abs"\n')
    assert layout.load(config_file=str(path)).user == "abs"


def test_missing_default_config_toml_is_fine(layout: Layout) -> None:
    assert layout.load() == WorkerConfig()


def test_missing_explicit_config_is_an_error(layout: Layout) -> None:
    error = layout.error(config_file="nope.toml")
    assert error.key == "config"
    assert error.source == "flag --config"
    message = str(error)
    assert message.startswith('invalid config "nope.toml" from flag --config: no such file')
    assert str(layout.cwd) in message


def test_missing_explicit_absolute_config_is_an_error(layout: Layout) -> None:
    path = layout.root / "missing.toml"
    error = layout.error(config_file=str(path))
    assert str(error).endswith("no such file")


# --- paths ------------------------------------------------------------------------------------


def test_paths_in_a_file_are_relative_to_that_file(layout: Layout) -> None:
    layout.write(
        layout.project / "config.toml",
        '[worker]\ncredential_path = "secrets/creds"\nlog_path = "/var/log/w.log"\n',
    )
    config = layout.load()
    assert config.credential_path == layout.project / "secrets" / "creds"
    assert config.log_path == Path("/var/log/w.log")


def test_paths_in_the_user_file_are_relative_to_its_directory(layout: Layout) -> None:
    layout.write(layout.user_file, '[worker]\ncredential_path = "creds"\n')
    assert layout.load().credential_path == layout.user_config_dir / "mitosis" / "creds"


def test_paths_in_global_are_relative_to_their_file(layout: Layout) -> None:
    layout.write(layout.project / "config.toml", '[global]\nlog_path = "logs/w.log"\n')
    config = layout.load(cli={"log_path": "other.log"})
    assert config.log_path == layout.project / "logs" / "w.log"


def test_paths_from_env_and_flags_are_relative_to_cwd(layout: Layout) -> None:
    config = layout.load(
        env={"MITO_CREDENTIAL_PATH": "c/creds"},
        cli={"log_path": "logs/w.log"},
    )
    assert config.credential_path == layout.cwd / "c" / "creds"
    assert config.log_path == layout.cwd / "logs" / "w.log"


# --- environment ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("false", False),
        ("True", "True"),
        ("60", 60),
        ("-3", -3),
        ("1.5", 1.5),
        ("5m", "5m"),
        ("  5m  ", "5m"),
        ('"123"', "123"),
        ('"a \\"b\\""', 'a "b"'),
        ("[a, b]", ["a", "b"]),
        ("[gpu,a100]", ["gpu", "a100"]),
        ('["x y", z]', ["x y", "z"]),
        ("[a, b,]", ["a", "b"]),
        ("[]", []),
        ("[a,,b]", "[a,,b]"),
        ("[[a]]", "[[a]]"),
        ("http://h:5000/x", "http://h:5000/x"),
    ],
)
def test_env_values_are_parsed_toml_like(text: str, value: object) -> None:
    assert parse_env_value(text) == value


def test_env_keys_are_case_insensitive(layout: Layout) -> None:
    config = layout.load(
        env={
            "MITO_TAGS": "[gpu,a100]",
            "mito_skip_redis": "true",
            "Mito_Labels": '["rack 1", "x"]',
            "MITO_COORDINATOR_ADDR": "https://coord.example:8443",
            "MITO_FILE_LOG": "true",
            "MITO_ARTIFACT_COMPRESSION": "9",
            "MITO_LIFETIME": "7d",
            "MITO_DRAIN_TIMEOUT": "30s",
        }
    )
    assert config.tags == ("gpu", "a100")
    assert config.skip_redis is True
    assert config.labels == ("rack 1", "x")
    assert config.coordinator_addr == "https://coord.example:8443"
    assert config.file_log is True
    assert config.artifact_compression == 9
    assert config.lifetime == 7 * 86400
    assert config.drain_timeout == 30


def test_unrelated_env_is_ignored(layout: Layout) -> None:
    config = layout.load(
        env={
            "MITO_FILE_LOG_LEVEL": "debug",
            "MITO_TASK_UUID": "x",
            "MITO_CONFIG": "nope.toml",
            "POLLING_INTERVAL": "60",
            "HOME": "/root",
        }
    )
    assert config == WorkerConfig()


def test_numeric_env_polling_interval_is_rejected(layout: Layout) -> None:
    error = layout.error(env={"MITO_POLLING_INTERVAL": "60"})
    assert str(error) == (
        'invalid polling_interval "60" from environment variable MITO_POLLING_INTERVAL:'
        ' expected a duration string such as "30s", "5m", "1h 30m"'
    )
    assert error.key == "polling_interval"
    assert error.source == "environment variable MITO_POLLING_INTERVAL"


def test_env_source_keeps_the_variable_spelling(layout: Layout) -> None:
    error = layout.error(env={"mito_Heartbeat_Interval": "5 soon"})
    assert "from environment variable mito_Heartbeat_Interval:" in str(error)
    assert "unknown unit 'soon'" in str(error)


def test_quoted_env_duration_is_accepted(layout: Layout) -> None:
    assert layout.load(env={"MITO_HEARTBEAT_INTERVAL": '"90s"'}).heartbeat_interval == 90


def test_numeric_env_user_is_taken_as_typed(layout: Layout) -> None:
    # A deliberate leniency: the original asks for MITO_USER='"123"'.
    assert layout.load(env={"MITO_USER": "123"}).user == "123"
    assert layout.load(env={"MITO_USER": '"123"'}).user == "123"
    assert layout.load(env={"MITO_PASSWORD": "true"}).password == "true"


def test_env_bool_must_be_true_or_false(layout: Layout) -> None:
    error = layout.error(env={"MITO_FILE_LOG": "yes"})
    assert str(error) == (
        'invalid file_log "yes" from environment variable MITO_FILE_LOG: expected true or false'
    )


def test_env_list_must_be_an_array(layout: Layout) -> None:
    error = layout.error(env={"MITO_TAGS": "gpu"})
    assert 'invalid tags "gpu" from environment variable MITO_TAGS' in str(error)
    assert "[gpu, a100]" in str(error)


# --- value checks -----------------------------------------------------------------------------


def test_toml_integer_duration_is_rejected(layout: Layout) -> None:
    path = layout.write(layout.project / "config.toml", "[worker]\npolling_interval = 60\n")
    error = layout.error()
    assert error.key == "polling_interval"
    assert error.source == str(path)
    message = str(error)
    assert message.startswith(f"invalid polling_interval 60 from {path}: expected a duration")
    assert '"60s"' in message


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ('file_log = "true"', "file_log", "expected true or false"),
        ("skip_redis = 1", "skip_redis", "expected true or false"),
        ('tags = "gpu"', "tags", "expected a list of strings"),
        ('groups = ["a", 1]', "groups", "expected a list of strings"),
        ('labels = [""]', "labels", "expected a list of strings"),
        ("user = 5", "user", "expected a string"),
        ('credential_path = ""', "credential_path", "expected a path"),
        ("artifact_compression = 10", "artifact_compression", "integer from 0"),
        ("artifact_compression = -1", "artifact_compression", "integer from 0"),
        ("artifact_compression = true", "artifact_compression", "integer from 0"),
        ('artifact_compression = "5"', "artifact_compression", "integer from 0"),
        ('coordinator_addr = "localhost:5000"', "coordinator_addr", "http:// or https://"),
        ('coordinator_addr = "ftp://h"', "coordinator_addr", "http:// or https://"),
        ('coordinator_addr = "http://"', "coordinator_addr", "http:// or https://"),
        ('coordinator_addr = "http://h:99999"', "coordinator_addr", "http:// or https://"),
        ('polling_interval = "0s"', "polling_interval", "longer than zero"),
        ('heartbeat_interval = "30"', "heartbeat_interval", "missing unit after '30'"),
        ('request_timeout = "0"', "request_timeout", "longer than zero"),
        ('lifetime = "1 forever"', "lifetime", "unknown unit 'forever'"),
        ("drain_timeout = 1.5", "drain_timeout", "expected a duration string"),
    ],
)
def test_invalid_file_values(layout: Layout, line: str, key: str, expected: str) -> None:
    path = layout.write(layout.project / "config.toml", f"[worker]\n{line}\n")
    error = layout.error()
    assert error.key == key
    assert error.source == str(path)
    assert str(error).startswith(f"invalid {key} ")
    assert f" from {path}: " in str(error)
    assert expected in str(error)


def test_valid_file_values(layout: Layout) -> None:
    layout.write(
        layout.project / "config.toml",
        """
        [worker]
        coordinator_addr = "https://coord.example/prefix"
        polling_interval = "1h 30m"
        heartbeat_interval = "2 minutes"
        user = "alice"
        password = "s3cret"
        groups = ["g1", "g2:read", "g1"]
        tags = ["gpu"]
        labels = ["rack1"]
        file_log = true
        shared_log = true
        lifetime = "1year"
        retain = true
        skip_redis = true
        drain_timeout = "0s"
        artifact_compression = 0
        request_timeout = "1.5s"
        """,
    )
    config = layout.load()
    assert config == WorkerConfig(
        coordinator_addr="https://coord.example/prefix",
        polling_interval=5400,
        heartbeat_interval=120,
        user="alice",
        password="s3cret",
        groups=("g1", "g2:read"),
        tags=("gpu",),
        labels=("rack1",),
        file_log=True,
        shared_log=True,
        lifetime=31_557_600,
        retain=True,
        skip_redis=True,
        drain_timeout=0,
        artifact_compression=0,
        request_timeout=1.5,
    )


def test_flag_values(layout: Layout) -> None:
    config = layout.load(
        cli={
            "coordinator_addr": "http://10.0.0.1:5000",
            "artifact_compression": "6",
            "groups": ["g1", "g2:write"],
            "file_log": True,
            "lifetime": "7d",
        }
    )
    assert config.coordinator_addr == "http://10.0.0.1:5000"
    assert config.artifact_compression == 6
    assert config.groups == ("g1", "g2:write")
    assert config.file_log is True
    assert config.lifetime == 604800


@pytest.mark.parametrize(
    ("key", "value", "flag"),
    [
        ("polling_interval", "60", "--polling-interval"),
        ("coordinator_addr", "nowhere", "--coordinator"),
        ("artifact_compression", "fast", "--artifact-compression"),
        ("request_timeout", "-1s", "--request-timeout"),
    ],
)
def test_invalid_flag_values_name_the_flag(layout: Layout, key: str, value: str, flag: str) -> None:
    error = layout.error(cli={key: value})
    assert error.source == f"flag {flag}"
    assert str(error).startswith(f'invalid {key} "{value}" from flag {flag}: ')
    assert "expected" in str(error)
    assert error.expected in str(error)


def test_password_is_never_shown_in_errors(layout: Layout) -> None:
    layout.write(layout.project / "config.toml", "[worker]\npassword = 987654\n")
    error = layout.error()
    assert error.key == "password"
    assert "987654" not in str(error)
    assert str(error).startswith("invalid password from ")


def test_long_values_are_shortened_in_errors(layout: Layout) -> None:
    error = layout.error(cli={"lifetime": "x" * 500})
    assert len(str(error)) < 300


# --- file errors ------------------------------------------------------------------------------


def test_toml_syntax_error_names_the_file_and_line(layout: Layout) -> None:
    path = layout.write(
        layout.project / "config.toml", '[worker]\nuser = "a"\npolling_interval = = 1\n'
    )
    error = layout.error()
    assert error.key is None
    assert error.source == str(path)
    assert str(error).startswith(f"{path}: invalid TOML at line 3, column ")


def test_toml_syntax_error_in_the_user_file(layout: Layout) -> None:
    layout.write(layout.user_file, "[worker\n")
    error = layout.error()
    assert error.source == str(layout.user_file)
    assert "line 1" in str(error)


def test_worker_must_be_a_table(layout: Layout) -> None:
    path = layout.write(layout.project / "config.toml", "worker = 5\n")
    assert str(layout.error()) == f"{path}: [worker] must be a table"


def test_non_utf8_file(layout: Layout) -> None:
    path = layout.project / "config.toml"
    path.write_bytes(b'[worker]\nuser = "\xff"\n')
    assert str(layout.error()) == f"{path}: the file is not UTF-8 text"
