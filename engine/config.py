"""Configuration: one frozen :class:`Config` built from four layers.

Precedence, lowest first (a later layer overrides an earlier one, key by key):

1. defaults (the field defaults below, or per-command defaults the CLI passes in);
2. a TOML file: ``--config PATH``, else the environment variable ``SPREADWATCH_CONFIG``;
3. environment variables:

   - ``SPREADWATCH_<SECTION>__<KEY>`` (upper case, *two* underscores between section and key),
     e.g. ``SPREADWATCH_DATABASE__DATA_DIR=/srv/pg``, ``SPREADWATCH_ENGINE__DRY_RUN=yes``;
   - the conventional names ``DATABASE_URL`` (database.url), ``TRADIER_TOKEN`` (broker.token)
     and ``TRADIER_ACCOUNT_ID`` (broker.account_id); when both spellings are set the
     ``SPREADWATCH_`` one wins, being the more specific;
   - ``SPREADWATCH_CONFIG`` names the file (layer 2) and ``SPREADWATCH_TEST_*`` is reserved for
     the test suite; every other ``SPREADWATCH_*`` variable must name a key, so a typo is an
     error rather than a silently ignored setting;

4. command-line flags.

The TOML file has one table per section::

    [database]
    url = "postgresql://app@db.internal/spreadwatch"
    connect_timeout = 3

Values from the file keep their TOML types and must match exactly; values from the environment
and from flags are strings and are parsed to the field's type (bools accept true/false/1/0/
yes/no/on/off; paths expand ``~`` and a relative path is relative to the current directory;
an empty string for an optional field means "not set").

Anything wrong - an unreadable file, an unknown section or key, a value of the wrong type - raises
:class:`~engine.errors.ConfigError` with one line naming the key and where it came from.

Adding a key is one line: a field with its type and default on its section Struct. The
environment variable, the file key and the checks follow from the field.
"""

from __future__ import annotations

import difflib
import os
import pathlib
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec
import platformdirs

from engine.errors import ConfigError
from engine.log import Level, Secret, redact_text

__all__ = [
    "ENV_ALIASES",
    "ENV_PREFIX",
    "BrokerConfig",
    "Config",
    "DatabaseConfig",
    "EngineConfig",
    "LogConfig",
    "Secret",
    "env_var_for",
    "load_config",
]

ENV_PREFIX: Final = "SPREADWATCH_"
CONFIG_PATH_ENV: Final = "SPREADWATCH_CONFIG"
_RESERVED_ENV_PREFIXES: Final = ("SPREADWATCH_TEST_",)

Seconds = Annotated[float, msgspec.Meta(gt=0)]


def _default_data_dir() -> pathlib.Path:
    return pathlib.Path(platformdirs.user_data_dir("spreadwatch")) / "pgdata"


class BrokerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["tradier", "paper", "sim"] = "tradier"
    rest_url: str = "https://api.tradier.com/v1"
    market_stream_url: str = "wss://ws.tradier.com/v1/markets/events"
    account_stream_url: str = "wss://ws.tradier.com/v1/accounts/events"
    # A Secret: repr and the logger show "***"; call .reveal() where the header is built.
    token: Secret | None = None
    account_id: str | None = None
    # Requests per minute the engine allows itself (Tradier live: 60 trading, 120 account and
    # order reads; the sandbox allows 60 reads: set read_rate_limit = 60 there).
    trading_rate_limit: Annotated[int, msgspec.Meta(ge=1)] = 60
    read_rate_limit: Annotated[int, msgspec.Meta(ge=1)] = 120


class DatabaseConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # None: the embedded PostgreSQL in data_dir. A URL may carry a password, hence __repr__.
    url: str | None = None
    data_dir: pathlib.Path = msgspec.field(default_factory=_default_data_dir)
    connect_timeout: Seconds = 5.0

    def __repr__(self) -> str:
        url = None if self.url is None else redact_text(self.url)
        return (
            f"DatabaseConfig(url={url!r}, data_dir={self.data_dir!r}, "
            f"connect_timeout={self.connect_timeout!r})"
        )


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dry_run: bool = False
    adopt_imported: Literal["managed", "unmanaged", "ignore"] = "managed"
    positions_refresh_seconds: Seconds = 30.0
    phantom_confirmations: Annotated[int, msgspec.Meta(ge=1)] = 3
    # After an exit order ends unfilled (cancelled, rejected, expired) or is declined, market
    # seconds before the trade's watcher may decide to exit again.
    exit_retry_seconds: Seconds = 30.0
    # SIGTERM/SIGINT: seconds the engine gives in-flight order handling and the audit writer to
    # reach a known state before it stops anyway (the next start reconciles what is left).
    shutdown_timeout_seconds: Seconds = 20.0


class HttpConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The engine's own HTTP endpoint: /healthz, /readyz, /metrics (loopback by default)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    # 0: any free port (the chosen one is logged as http.listening).
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8787


class LogConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Level = "info"


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole configuration. Each field is a section; add a section here and it is wired."""

    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)


# Conventional variable names, lower precedence than their SPREADWATCH_ spelling.
ENV_ALIASES: Final[Mapping[str, str]] = {
    "DATABASE_URL": "database.url",
    "TRADIER_TOKEN": "broker.token",
    "TRADIER_ACCOUNT_ID": "broker.account_id",
}

_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


# --------------------------------------------------------------------------- schema lookups


def _sections() -> dict[str, type[msgspec.Struct]]:
    return {f.name: f.type for f in msgspec.structs.fields(Config)}


def _field_types(section: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(section)}


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s, cls in _sections().items() for k in _field_types(cls)]


def env_var_for(key: str) -> str:
    """The ``SPREADWATCH_`` variable for a dotted key: ``database.data_dir`` ->
    ``SPREADWATCH_DATABASE__DATA_DIR``."""
    section, _, name = key.partition(".")
    return f"{ENV_PREFIX}{section.upper()}__{name.upper()}"


def _is_secret_key(key: str) -> bool:
    section, _, name = key.partition(".")
    field_type = _field_types(_sections()[section])[name]
    return Secret in _union_members(field_type) or "token" in name or "password" in name


def _union_members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _describe(tp: Any) -> str:
    """The expected type in words, for error messages."""
    if typing.get_origin(tp) is Annotated:
        base, *metas = typing.get_args(tp)
        bounds = [
            f"{op} {value}"
            for meta in metas
            for op, value in ((">", meta.gt), (">=", meta.ge), ("<", meta.lt), ("<=", meta.le))
            if isinstance(meta, msgspec.Meta) and value is not None
        ]
        return " ".join([_describe(base), *bounds])
    if typing.get_origin(tp) is Literal:
        return "one of " + "|".join(str(v) for v in typing.get_args(tp))
    members = _union_members(tp)
    if len(members) > 1:
        return " or ".join(_describe(m) for m in members if m is not type(None)) + " (optional)"
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        pathlib.Path: "a path",
        Secret: "a string",
    }
    return names.get(tp, getattr(tp, "__name__", str(tp)))


# --------------------------------------------------------------------------- value conversion


def _dec_hook(tp: type, obj: object) -> object:
    if isinstance(obj, tp):  # already converted (a per-command default, a typed flag)
        return obj
    if tp is pathlib.Path and isinstance(obj, str):
        return pathlib.Path(obj).expanduser()
    if tp is Secret and isinstance(obj, str):
        return Secret(obj)
    raise TypeError(f"expected {tp.__name__}, got {type(obj).__name__}")


def _from_string(field_type: Any, raw: str) -> object:
    """Pre-parse a string from the environment or a flag where msgspec's lax mode would not."""
    members = _union_members(field_type)
    if raw == "" and type(None) in members:
        return None
    if bool in members:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return raw


def _convert(key: str, raw: object, source: str, *, from_string: bool) -> object:
    """Check one value against its field's type; raise ConfigError naming key and source."""
    section, _, name = key.partition(".")
    section_cls = _sections()[section]
    field_type = _field_types(section_cls)[name]
    value = _from_string(field_type, raw) if from_string and isinstance(raw, str) else raw
    try:
        # Converting a one-key dict into the section applies the field's type *and* its
        # constraints (Meta bounds, Literal sets) exactly as the final object will have them.
        converted = msgspec.convert(
            {name: value}, section_cls, strict=not from_string, dec_hook=_dec_hook
        )
    except msgspec.ValidationError as exc:
        shown = "***" if _is_secret_key(key) else repr(raw)
        raise ConfigError(
            f"config key {key} ({source}): expected {_describe(field_type)}, got {shown}"
        ) from exc
    return getattr(converted, name)


def _unknown(what: str, name: str, choices: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"unknown config {what} {name} ({source}){hint}")


# --------------------------------------------------------------------------- the layers


def _file_layer(path: pathlib.Path) -> dict[str, object]:
    source = f"file {path}"
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    sections = _sections()
    layer: dict[str, object] = {}
    for section, table in document.items():
        if section not in sections:
            raise _unknown("section", section, list(sections), source)
        if not isinstance(table, dict):
            raise ConfigError(f"config section {section} ({source}): expected a table [{section}]")
        fields = _field_types(sections[section])
        for name, raw in table.items():
            key = f"{section}.{name}"
            if name not in fields:
                raise _unknown("key", key, _all_keys(), source)
            layer[key] = _convert(key, raw, source, from_string=False)
    return layer


def _env_layer(environ: Mapping[str, str]) -> dict[str, object]:
    by_var = {env_var_for(key): key for key in _all_keys()}
    layer: dict[str, object] = {}
    # Aliases first so the SPREADWATCH_ spelling of the same key overrides them.
    for alias, alias_key in ENV_ALIASES.items():
        if alias in environ:
            layer[alias_key] = _convert(alias_key, environ[alias], f"env {alias}", from_string=True)
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_PATH_ENV:
            continue
        if var.startswith(_RESERVED_ENV_PREFIXES):
            continue
        key = by_var.get(var)
        if key is None:
            close = difflib.get_close_matches(var, list(by_var), n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"unknown config environment variable {var} (expected "
                f"{ENV_PREFIX}<SECTION>__<KEY>){hint}"
            )
        layer[key] = _convert(key, raw, f"env {var}", from_string=True)
    return layer


def _override_layer(
    overrides: Mapping[str, object], describe: Mapping[str, str], default_source: str
) -> dict[str, object]:
    known = _all_keys()
    layer: dict[str, object] = {}
    for key, raw in overrides.items():
        source = describe.get(key, default_source)
        if key not in known:
            raise _unknown("key", key, known, source)
        layer[key] = _convert(key, raw, source, from_string=True)
    return layer


def load_config(
    argv_overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    *,
    defaults: Mapping[str, object] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from defaults < file < environment < flags.

    ``argv_overrides`` and ``defaults`` map dotted keys (``"database.data_dir"``) to values
    (strings, or values of the field's type); ``None`` values are ignored, so an unset flag can
    be passed as is. ``environ`` defaults to ``os.environ``. ``config_path`` (the ``--config``
    flag) wins over ``SPREADWATCH_CONFIG``. ``flag_names`` maps a key to the flag that set it, so
    an error names ``--data-dir`` rather than the key alone.
    """
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (argv_overrides or {}).items() if v is not None}
    base = {k: v for k, v in (defaults or {}).items() if v is not None}

    merged = _override_layer(base, {}, "built-in default")
    path: str | os.PathLike[str] | None = config_path
    if path is None:
        path = environ.get(CONFIG_PATH_ENV) or None
    if path is not None:
        merged |= _file_layer(pathlib.Path(path).expanduser())
    merged |= _env_layer(environ)
    names = {key: f"flag {flag}" for key, flag in (flag_names or {}).items()}
    merged |= _override_layer(flags, names, "command line")
    return _build(merged)


def _build(values: Mapping[str, object]) -> Config:
    by_section: dict[str, dict[str, object]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        by_section.setdefault(section, {})[name] = value
    # Every value was already checked against its field, so plain construction is safe.
    sections: dict[str, Any] = {
        section: cls(**by_section.get(section, {})) for section, cls in _sections().items()
    }
    return Config(**sections)
