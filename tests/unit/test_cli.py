"""The ``spreadwatch`` command line, run as a user runs it (a subprocess) where it matters.

The database tests start the embedded PostgreSQL in a fresh temporary data directory and use the
real clock throughout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from engine.cli import _load, _parse, _report
from engine.errors import ConfigError, DatabaseUnavailable, MigrationError

ERROR_LINE = re.compile(r"spreadwatch: error: \S.*")


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that would configure spreadwatch."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPREADWATCH_", "TRADIER_")) and key != "DATABASE_URL"
    }
    env.update(extra)
    return env


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A directory outside pytest's tmp tree for an embedded server's data: as root the server
    runs as another user, and any pytest run that starts chmods /tmp/pytest-of-<user> to 0700."""
    directory = Path(tempfile.mkdtemp(prefix="spreadwatch-cli-test-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _spreadwatch(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=cwd,
        env=_clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stderr.splitlines()


def _migration_names() -> list[str]:
    from storage.migrations import load_migrations

    return [m.name for m in load_migrations()]


def test_console_script_points_at_main() -> None:
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "spreadwatch"]
    assert script.value == "engine.cli:main"


# ----------------------------------------------------------------------------- config errors


def test_unknown_env_key_exits_2_with_one_line_naming_it(tmp_path: Path) -> None:
    env = _clean_env(SPREADWATCH_DATABASE__CONECT_TIMEOUT="3")
    result = _spreadwatch("db", "status", cwd=tmp_path, env=env, timeout=30)
    assert result.returncode == 2
    (line,) = _stderr_lines(result)
    assert ERROR_LINE.fullmatch(line)
    assert "SPREADWATCH_DATABASE__CONECT_TIMEOUT" in line
    assert "SPREADWATCH_DATABASE__CONNECT_TIMEOUT" in line  # the suggestion
    assert result.stdout == ""


def test_unknown_key_in_config_file_exits_2_naming_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "spreadwatch.toml"
    config.write_text("[engine]\ndryrun = true\n")
    result = _spreadwatch("--config", str(config), "demo", cwd=tmp_path, timeout=30)
    assert result.returncode == 2
    (line,) = _stderr_lines(result)
    assert ERROR_LINE.fullmatch(line)
    assert "engine.dryrun" in line and str(config) in line
    assert not (tmp_path / ".spreadwatch").exists()  # rejected before touching anything


def test_bad_value_exits_2_naming_key_source_and_type(tmp_path: Path) -> None:
    env = _clean_env(SPREADWATCH_CONFIG=str(tmp_path / "none.toml"))
    result = _spreadwatch("db", "status", cwd=tmp_path, env=env, timeout=30)
    assert result.returncode == 2
    (line,) = _stderr_lines(result)
    assert "none.toml" in line and "does not exist" in line

    env = _clean_env(SPREADWATCH_ENGINE__PHANTOM_CONFIRMATIONS="zero")
    result = _spreadwatch("db", "status", cwd=tmp_path, env=env, timeout=30)
    assert result.returncode == 2
    (line,) = _stderr_lines(result)
    assert "engine.phantom_confirmations" in line and "an integer >= 1" in line


# ----------------------------------------------------------------------------- in process


def test_global_flags_work_before_and_after_the_command(tmp_path: Path) -> None:
    for argv in (
        ["--data-dir", str(tmp_path), "--dry-run", "--log-level", "debug", "db", "status"],
        ["db", "status", "--data-dir", str(tmp_path), "--dry-run", "--log-level=debug"],
    ):
        global_args, args = _parse(argv)
        assert (args.command, args.db_command) == ("db", "status")
        config = _load(global_args, args)
        assert config.database.data_dir == tmp_path
        assert config.engine.dry_run is True
        assert config.log.level == "debug"


def test_flags_override_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SPREADWATCH_") or k == "DATABASE_URL"]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", "postgresql://env@db/x")
    global_args, args = _parse(["--database-url", "postgresql://flag@db/x", "db", "migrate"])
    assert _load(global_args, args).database.url == "postgresql://flag@db/x"
    global_args, args = _parse(["db", "migrate"])
    assert _load(global_args, args).database.url == "postgresql://env@db/x"


def test_demo_keeps_the_engine_logs_to_errors_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in [k for k in os.environ if k.startswith("SPREADWATCH_") or k == "DATABASE_URL"]:
        monkeypatch.delenv(key)
    global_args, args = _parse(["demo"])
    assert _load(global_args, args).log.level == "error"
    global_args, args = _parse(["demo", "--log-level", "info"])
    assert _load(global_args, args).log.level == "info"


def test_errors_become_one_line_and_the_right_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert _report(ConfigError("config key x.y (env X): bad")) == 2
    assert _report(DatabaseUnavailable("cannot connect\nto postgresql://u:pw@h/db")) == 1
    group = ExceptionGroup("nursery", [MigrationError("0002_x changed"), ConfigError("bad key")])
    assert _report(group) == 2
    assert _report(KeyboardInterrupt()) == 130
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "spreadwatch: error: config key x.y (env X): bad",
        "spreadwatch: error: cannot connect to postgresql://u:***@h/db",
        "spreadwatch: error: 0002_x changed; bad key",
        "spreadwatch: error: interrupted",
    ]


def test_unexpected_errors_keep_their_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert _report(RuntimeError("a bug")) is None
    assert _report(ExceptionGroup("g", [DatabaseUnavailable("x"), ValueError("bug")])) is None
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- the database


def test_unreachable_database_fails_fast_with_one_line(tmp_path: Path) -> None:
    env = _clean_env(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    started = time.monotonic()
    result = _spreadwatch("db", "status", cwd=tmp_path, env=env, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 10
    (line,) = _stderr_lines(result)
    assert ERROR_LINE.fullmatch(line)
    assert "127.0.0.1:1" in line
    assert "Traceback" not in result.stdout


@pytest.mark.storage
def test_db_migrate_twice_then_status_reports_everything_applied(private_dir: Path) -> None:
    tmp_path = private_dir
    names = _migration_names()
    assert names, "the migrations package holds no migration"
    data_dir = str(tmp_path / "pgdata")

    before = _spreadwatch("db", "status", "--data-dir", data_dir, cwd=tmp_path)
    assert before.returncode == 1, before.stderr  # fresh: everything pending
    assert all(re.search(rf"^{n}\s+pending$", before.stdout, re.M) for n in names)

    first = _spreadwatch("db", "migrate", "--data-dir", data_dir, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert re.findall(r"^applied (\S+)$", first.stdout, re.M) == names

    second = _spreadwatch("db", "migrate", "--data-dir", data_dir, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert re.findall(r"^applied (\S+)$", second.stdout, re.M) == []
    assert "nothing to apply" in second.stdout

    status = _spreadwatch("db", "status", "--data-dir", data_dir, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    for name in names:
        assert re.search(rf"^{name}\s+applied \d{{4}}-\d\d-\d\d", status.stdout, re.M)
    assert f"{len(names)} of {len(names)} migration(s) applied, 0 pending, 0 changed" in (
        status.stdout
    )


@pytest.mark.storage
@pytest.mark.system
def test_demo_runs_the_engine_against_the_simulator_and_decides_the_stop(tmp_path: Path) -> None:
    # The bundled scenario drives SPY toward the short strike: the engine must watch the spread,
    # decide the stop, send a closing debit order tagged with its client order id, and close the
    # trade from the fills with a realized loss.
    result = _spreadwatch("demo", "--speed", "60", cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "spreadwatch demo: scenario 'credit-spread-stop'" in out
    assert re.search(r"SPY251219P00650000 \d+\.\d+x\d+\.\d+", out), out  # quotes reached it
    assert re.search(r"trade T1: EXIT by stop_loss at .*sent to the router", out), out
    assert re.search(
        r"order \d+ multileg debit \(.*buy_to_close 2 SPY251219P00650000.*tag sw-1-", out
    )
    # At least one spread was bought back (how many orders it takes depends on how the market
    # moves against the walked limit, which the machine's load shifts), and the trade's
    # realized P&L counts what filled: a loss.
    assert re.search(r"filled \d+ at \d+\.\d+", out), out
    assert re.search(
        r"trade T1: bull_put_credit x[01] CLOS(ED by STOP_LOSS|ING), realized P&L -\d+\.\d\d", out
    )


@pytest.mark.storage
@pytest.mark.system
def test_demo_in_dry_run_sends_nothing(tmp_path: Path) -> None:
    result = _spreadwatch("--dry-run", "demo", "--speed", "150", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "engine in dry run" in out
    assert re.search(r"trade T1: EXIT by stop_loss at .*dry run", out), out
    assert "orders sent: 0 (dry run: none expected)" in out
    assert "trade T1: bull_put_credit x2 OPEN" in out


@pytest.mark.storage
async def test_db_status_exits_1_when_an_applied_migration_changed(private_dir: Path) -> None:
    tmp_path = private_dir
    import trio

    from storage import open_database

    data_dir = tmp_path / "pgdata"
    first = await trio.to_thread.run_sync(
        lambda: _spreadwatch("db", "migrate", "--data-dir", str(data_dir), cwd=tmp_path)
    )
    assert first.returncode == 0, first.stderr
    name = _migration_names()[0]
    with trio.fail_after(60):
        async with open_database(None, data_dir=data_dir) as db:
            # As if the file had been edited after it was applied.
            await db.execute(
                "UPDATE schema_migrations SET checksum = $1 WHERE name = $2", "0" * 64, name
            )
    status = await trio.to_thread.run_sync(
        lambda: _spreadwatch("db", "status", "--data-dir", str(data_dir), cwd=tmp_path)
    )
    assert status.returncode == 1, status.stderr
    assert re.search(rf"^{name}\s+CHANGED", status.stdout, re.M)
    assert "1 changed" in status.stdout
