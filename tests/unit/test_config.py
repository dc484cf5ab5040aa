"""engine.config: defaults < TOML file < environment < flags, and one clear error per mistake."""

from __future__ import annotations

import io
import json
from pathlib import Path

import msgspec
import platformdirs
import pytest

from engine.config import Config, Secret, env_var_for, load_config
from engine.errors import ConfigError
from engine.log import LogSink, get_logger


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spreadwatch.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config({}, {})
    assert config.broker.kind == "tradier"
    assert config.broker.rest_url == "https://api.tradier.com/v1"
    assert config.broker.market_stream_url == "wss://ws.tradier.com/v1/markets/events"
    assert config.broker.token is None and config.broker.account_id is None
    assert config.database.url is None
    assert config.database.data_dir == Path(platformdirs.user_data_dir("spreadwatch")) / "pgdata"
    assert config.database.connect_timeout == 5.0
    assert config.engine.dry_run is False
    assert config.engine.adopt_imported == "managed"
    assert config.engine.positions_refresh_seconds == 30
    assert config.engine.phantom_confirmations == 3
    assert config.log.level == "info"


def test_config_is_frozen() -> None:
    config = load_config({}, {})
    with pytest.raises(AttributeError):
        config.log.level = "debug"  # type: ignore[misc]


def test_precedence_across_all_four_layers(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [engine]
        phantom_confirmations = 5      # file only: wins over the default
        positions_refresh_seconds = 10 # file, then env
        adopt_imported = "unmanaged"   # file, env, flag
        [log]
        level = "warning"
        """,
    )
    environ = {
        "SPREADWATCH_ENGINE__POSITIONS_REFRESH_SECONDS": "12.5",
        "SPREADWATCH_ENGINE__ADOPT_IMPORTED": "ignore",
        "SPREADWATCH_DATABASE__CONNECT_TIMEOUT": "2",
    }
    flags = {"engine.adopt_imported": "managed", "log.level": None}  # None: flag not given
    defaults = {"database.data_dir": tmp_path / "command-default"}

    config = load_config(flags, environ, path, defaults=defaults)

    assert config.engine.phantom_confirmations == 5  # file over default
    assert config.engine.positions_refresh_seconds == 12.5  # env over file
    assert config.engine.adopt_imported == "managed"  # flag over env over file
    assert config.log.level == "warning"  # an unset flag does not erase the file's value
    assert config.database.connect_timeout == 2.0  # env over default
    assert config.database.data_dir == tmp_path / "command-default"  # per-command default
    assert config.engine.dry_run is False  # untouched default


def test_command_defaults_lose_to_every_other_layer(tmp_path: Path) -> None:
    defaults = {"database.data_dir": "/from/command"}
    from_file = _write(tmp_path, '[database]\ndata_dir = "/from/file"\n')
    assert load_config({}, {}, from_file, defaults=defaults).database.data_dir == Path("/from/file")
    env = {"SPREADWATCH_DATABASE__DATA_DIR": "/from/env"}
    assert load_config({}, env, defaults=defaults).database.data_dir == Path("/from/env")
    flags = {"database.data_dir": "/from/flag"}
    assert load_config(flags, env, defaults=defaults).database.data_dir == Path("/from/flag")


def test_config_path_from_environment_and_flag_wins(tmp_path: Path) -> None:
    env_file = tmp_path / "env.toml"
    env_file.write_text('[log]\nlevel = "error"\n')
    flag_file = tmp_path / "flag.toml"
    flag_file.write_text('[log]\nlevel = "debug"\n')
    environ = {"SPREADWATCH_CONFIG": str(env_file)}
    assert load_config({}, environ).log.level == "error"
    assert load_config({}, environ, flag_file).log.level == "debug"


def test_conventional_env_names_and_prefixed_spelling_wins() -> None:
    environ = {
        "DATABASE_URL": "postgresql://app@db/one",
        "TRADIER_TOKEN": "tok-123",
        "TRADIER_ACCOUNT_ID": "VA000001",
    }
    config = load_config({}, environ)
    assert config.database.url == "postgresql://app@db/one"
    assert isinstance(config.broker.token, Secret) and config.broker.token.reveal() == "tok-123"
    assert config.broker.account_id == "VA000001"

    environ["SPREADWATCH_DATABASE__URL"] = "postgresql://app@db/two"
    assert load_config({}, environ).database.url == "postgresql://app@db/two"
    # ...and a flag beats both.
    flags = {"database.url": "postgresql://app@db/three"}
    assert load_config(flags, environ).database.url == "postgresql://app@db/three"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("1", True),
        ("YES", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("Off", False),
    ],
)
def test_bool_strings(raw: str, expected: bool) -> None:
    assert load_config({}, {"SPREADWATCH_ENGINE__DRY_RUN": raw}).engine.dry_run is expected


def test_typed_flag_values_pass_through() -> None:
    assert load_config({"engine.dry_run": True}, {}).engine.dry_run is True


def test_paths_expand_home_and_empty_optional_means_unset() -> None:
    environ = {"SPREADWATCH_DATABASE__DATA_DIR": "~/pg", "DATABASE_URL": ""}
    config = load_config({}, environ)
    assert config.database.data_dir == Path("~/pg").expanduser()
    assert config.database.url is None


def test_env_var_naming_scheme() -> None:
    assert env_var_for("database.data_dir") == "SPREADWATCH_DATABASE__DATA_DIR"
    # every field of every section is reachable by its variable
    for section in msgspec.structs.fields(Config):
        for field in msgspec.structs.fields(section.type):
            var = env_var_for(f"{section.name}.{field.name}")
            load_config({}, {var: _sample(field.type)})


def _sample(tp: object) -> str:
    text = repr(tp)
    if "Literal" in text:
        return text.split("'")[1]
    if "bool" in text:
        return "yes"
    if "int" in text or "float" in text:
        return "7"
    return "/x" if "Path" in text else "value"


# ----------------------------------------------------------------------------- rejections


def _error(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[database]\nconnect_timeuot = 3\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config({}, {}, path)
    message = _error(excinfo)
    assert "database.connect_timeuot" in message
    assert str(path) in message
    assert "did you mean database.connect_timeout" in message


def test_unknown_section_in_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[brokers]\nkind = 'paper'\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config({}, {}, path)
    message = _error(excinfo)
    assert "brokers" in message and str(path) in message and "did you mean broker" in message


def test_key_outside_a_section_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "dry_run = true\n")
    with pytest.raises(ConfigError, match="dry_run"):
        load_config({}, {}, path)


def test_unknown_env_var_is_rejected_naming_it() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config({}, {"SPREADWATCH_DATABASE_URL": "postgresql://x@y/z"})
    message = _error(excinfo)
    assert "SPREADWATCH_DATABASE_URL" in message
    assert "did you mean SPREADWATCH_DATABASE__URL" in message


def test_unrelated_and_reserved_env_vars_are_ignored() -> None:
    environ = {
        "HOME": "/root",
        "SPREADWATCH_CONFIG": "",
        "SPREADWATCH_TEST_DATABASE_URL": "postgresql://postgres@127.0.0.1/test",
    }
    assert load_config({}, environ) == load_config({}, {})


def test_bad_value_in_env_names_key_variable_and_type() -> None:
    environ = {"SPREADWATCH_DATABASE__CONNECT_TIMEOUT": "soon"}
    with pytest.raises(ConfigError) as excinfo:
        load_config({}, environ)
    message = _error(excinfo)
    assert "database.connect_timeout" in message
    assert "SPREADWATCH_DATABASE__CONNECT_TIMEOUT" in message
    assert "a number > 0" in message and "'soon'" in message


def test_bad_value_in_file_is_strict_about_types(tmp_path: Path) -> None:
    path = _write(tmp_path, '[engine]\nphantom_confirmations = "3"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config({}, {}, path)
    message = _error(excinfo)
    assert "engine.phantom_confirmations" in message and str(path) in message
    assert "an integer >= 1" in message


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("engine.phantom_confirmations", "0", "an integer >= 1"),
        ("engine.adopt_imported", "sometimes", "one of managed|unmanaged|ignore"),
        ("broker.kind", "ibkr", "one of tradier|paper|sim"),
        ("log.level", "verbose", "one of debug|info|warning|error|critical"),
        ("engine.dry_run", "maybe", "a boolean"),
        ("engine.positions_refresh_seconds", "-1", "a number > 0"),
    ],
)
def test_bad_flag_values_name_flag_and_expected_type(key: str, raw: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config({key: raw}, {}, flag_names={key: "--some-flag"})
    message = _error(excinfo)
    assert key in message and "flag --some-flag" in message and expected in message


def test_unknown_override_key() -> None:
    with pytest.raises(ConfigError, match=r"engine\.dryrun"):
        load_config({"engine.dryrun": True}, {})


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({}, {}, tmp_path / "missing.toml")
    broken = _write(tmp_path, "[engine\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config({}, {}, broken)
    assert "not valid TOML" in _error(excinfo) and str(broken) in str(excinfo.value)


# ----------------------------------------------------------------------------- secrets


def test_secrets_never_in_repr_or_log_output() -> None:
    environ = {
        "TRADIER_TOKEN": "tok-very-secret",
        "DATABASE_URL": "postgresql://app:hunter2@db.internal/spreadwatch",
    }
    config = load_config({}, environ)
    assert config.broker.token is not None and config.broker.token.reveal() == "tok-very-secret"
    for text in (repr(config), str(config), repr(config.broker), repr(config.database)):
        assert "tok-very-secret" not in text and "hunter2" not in text
    assert "postgresql://app:***@db.internal/spreadwatch" in repr(config.database)

    buffer = io.BytesIO()
    log = get_logger("engine", sink=LogSink(stream=buffer))
    log.info("engine.configured", config=config, broker=config.broker, database=config.database)
    raw = buffer.getvalue()
    assert b"tok-very-secret" not in raw and b"hunter2" not in raw
    record = json.loads(raw)
    assert record["config"]["broker"]["token"] == "***"
    assert record["database"]["url"] == "postgresql://app:***@db.internal/spreadwatch"


def test_bad_secret_value_is_not_echoed(tmp_path: Path) -> None:
    path = _write(tmp_path, "[broker]\ntoken = 12345678\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config({}, {}, path)
    message = _error(excinfo)
    assert "broker.token" in message and "12345678" not in message
