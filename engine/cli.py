"""The ``spreadwatch`` command line.

Each subcommand lives in its own module, listed once in :data:`COMMANDS`. A command module
exposes ``register(subparsers) -> None``, which adds its parser(s) and sets a ``handler``::

    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = subparsers.add_parser("thing", help="one line for --help")
        parser.set_defaults(handler=_thing)

    async def _thing(args: argparse.Namespace, config: Config) -> int:   # or a plain def
        ...
        return 0                                                        # the exit status

The handler gets the parsed arguments and the loaded :class:`~engine.config.Config`; an
``async`` handler is run under ``trio.run``. A command may also set ``config_defaults`` (a dict
of dotted config keys) to change the *defaults* layer for itself only; files, environment and
flags still override it (``demo`` keeps its database under the current directory this way).
A command that reads no configuration sets ``needs_config=False`` and gets the built-in defaults,
so a broken config file or environment cannot stop it (``tail`` reading a log).
Modules are imported only when needed (the one named on the command line; all of them for
``--help``), so keep their top-level imports light and import heavy things inside handlers.

Global flags (``--config``, ``--database-url``, ``--data-dir``, ``--log-level``, ``--dry-run``)
are accepted before or after the subcommand; command modules must not reuse their names.

Errors: a :class:`~engine.errors.SpreadwatchError` or Ctrl-C reaching the top is printed as one
line, ``spreadwatch: error: <message>``, on stderr; the exit status is 2 for a ConfigError, 130
for an interrupt and 1 otherwise. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Final

from engine.config import Config, load_config
from engine.errors import ConfigError, SpreadwatchError
from engine.log import LEVELS, configure_logging, redact_text

__all__ = ["COMMANDS", "GLOBAL_FLAGS", "build_parser", "main", "run"]

# (command name, module) - the one table of subcommands. A module may register more than one
# command (the name here is the one used to import it lazily; others fall back to importing all).
COMMANDS: Final[tuple[tuple[str, str], ...]] = (
    ("db", "engine.cli_db"),
    ("demo", "engine.cli_demo"),
    ("run", "engine.cli_run"),
    # The simulator's commands (`spreadwatch sim`, `spreadwatch scenario run`) register here:
    ("sim", "sim.cli"),
    ("scenario", "engine.cli_scenario"),
    ("halt", "engine.cli_control"),
    ("tail", "engine.cli_tail"),
    ("bench", "engine.cli_bench"),
    ("status", "engine.cli_status"),
    ("health", "engine.cli_health"),
)

# flag -> (argparse dest, config key). These feed load_config's command-line layer.
GLOBAL_FLAGS: Final[dict[str, tuple[str, str]]] = {
    "--database-url": ("database_url", "database.url"),
    "--data-dir": ("data_dir", "database.data_dir"),
    "--log-level": ("log_level", "log.level"),
    "--dry-run": ("dry_run", "engine.dry_run"),
}

_PROG: Final = "spreadwatch"

Handler = Callable[[argparse.Namespace, Config], Any]


def _global_options(parser: argparse.ArgumentParser) -> None:
    # default=None everywhere: "not given" must not override lower config layers.
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="TOML config file (default: $SPREADWATCH_CONFIG)",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        default=None,
        help="external PostgreSQL (default: $DATABASE_URL, else embedded)",
    )
    parser.add_argument(
        "--data-dir", metavar="PATH", default=None, help="data directory of the embedded PostgreSQL"
    )
    parser.add_argument("--log-level", choices=LEVELS, default=None, help="log threshold")
    parser.add_argument(
        "--dry-run",
        action="store_const",
        const=True,
        default=None,
        help="run everything, record decisions, send no orders",
    )


def _globals_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a prefix must never steal a subcommand's own option (--data-file).
    parser = argparse.ArgumentParser(prog=_PROG, add_help=False, allow_abbrev=False)
    _global_options(parser)
    return parser


def _modules_for(command: str | None) -> list[str]:
    wanted = [module for name, module in COMMANDS if name == command]
    modules = wanted or [module for _, module in COMMANDS]
    return list(dict.fromkeys(modules))  # a module registering several commands: once


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``command`` only that command's module is imported."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Reactive exit management for option spreads.",
        parents=[_globals_parser()],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _modules_for(command):
        module = importlib.import_module(module_name)
        module.register(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spreadwatch")
    except PackageNotFoundError:
        return "unknown"


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, argparse.Namespace]:
    """Split global flags (anywhere on the line) from the command and its own arguments."""
    global_args, rest = _globals_parser().parse_known_args(list(argv))
    command = next((token for token in rest if not token.startswith("-")), None)
    args = build_parser(command).parse_args(rest)
    return global_args, args


def _load(global_args: argparse.Namespace, args: argparse.Namespace) -> Config:
    overrides = {key: getattr(global_args, dest) for dest, key in GLOBAL_FLAGS.values()}
    return load_config(
        overrides,
        None,
        global_args.config,
        defaults=getattr(args, "config_defaults", None),
        flag_names={key: flag for flag, (_, key) in GLOBAL_FLAGS.items()},
    )


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, load the config, run the handler; return the exit status."""
    # platformdirs warns on stderr when XDG_RUNTIME_DIR is unset (containers, CI); it is noise
    # for a command whose stderr is meant to hold at most one line.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    try:
        global_args, args = _parse(sys.argv[1:] if argv is None else argv)
        config = _load(global_args, args) if getattr(args, "needs_config", True) else Config()
        configure_logging(level=config.log.level)
        handler: Handler = args.handler
        if inspect.iscoroutinefunction(handler):
            import trio

            status = trio.run(handler, args, config)
        else:
            status = handler(args, config)
        return int(status or 0)
    except BaseException as exc:
        code = _report(exc)
        if code is None:
            raise
        return code


def _expected_leaves(exc: BaseException) -> list[BaseException] | None:
    """The user-facing errors inside ``exc`` (a group is unwrapped), or None if any is a bug."""
    if isinstance(exc, BaseExceptionGroup):
        leaves: list[BaseException] = []
        for inner in exc.exceptions:
            found = _expected_leaves(inner)
            if found is None:
                return None
            leaves.extend(found)
        return leaves
    if isinstance(exc, SpreadwatchError | KeyboardInterrupt):
        return [exc]
    return None


def _report(exc: BaseException) -> int | None:
    """Print one line for an expected error and return the exit status; None means re-raise."""
    leaves = _expected_leaves(exc)
    if not leaves:
        return None
    if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        message, code = "interrupted", 130
    else:
        errors = [leaf for leaf in leaves if isinstance(leaf, SpreadwatchError)]
        message = "; ".join(dict.fromkeys(_one_line(e) for e in errors))
        code = 2 if any(isinstance(e, ConfigError) for e in errors) else 1
    print(f"{_PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact_text(text)


def main() -> None:
    """Console-script entry point (``spreadwatch``)."""
    sys.exit(run())


if __name__ == "__main__":
    main()
