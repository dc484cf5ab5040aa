"""``spreadwatch halt``, ``resume`` and ``close``: parsing and the refusals that come before any
database is opened. Their effect on a database is tested in tests/storage/test_control.py, and
on a running listener in tests/actors/test_control_listener.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import _load, _parse


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPREADWATCH_", "TRADIER_")) and key != "DATABASE_URL"
    }
    env.update(extra)
    return env


def _spreadwatch(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["halt"], "manual halt"),
        (["halt", "--reason", "fomc day"], "fomc day"),
        (["resume"], "manual resume"),
        (["resume", "--reason=done"], "done"),
    ],
)
def test_halt_and_resume_parse_with_a_default_reason(argv: list[str], reason: str) -> None:
    _, args = _parse(argv)
    assert args.command == argv[0]
    assert args.reason == reason
    assert args.handler.__module__ == "engine.cli_control"


def test_close_takes_an_integer_trade_id(capsys: pytest.CaptureFixture[str]) -> None:
    _, args = _parse(["close", "42", "--reason", "news"])
    assert (args.command, args.trade_id, args.reason) == ("close", 42, "news")
    _, args = _parse(["close", "7"])
    assert (args.trade_id, args.reason) == (7, "manual close")
    with pytest.raises(SystemExit) as exc:
        _parse(["close", "SPY"])
    assert exc.value.code == 2
    assert "invalid int value: 'SPY'" in capsys.readouterr().err


def test_the_commands_keep_the_logs_to_warnings_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in [k for k in os.environ if k.startswith("SPREADWATCH_")]:
        monkeypatch.delenv(key)
    global_args, args = _parse(["halt"])
    assert _load(global_args, args).log.level == "warning"
    global_args, args = _parse(["close", "1", "--log-level", "debug"])
    assert _load(global_args, args).log.level == "debug"


def test_help_lists_the_three_switches(tmp_path: Path) -> None:
    result = _spreadwatch("--help", cwd=tmp_path, env=_clean_env())
    assert result.returncode == 0, result.stderr
    for command in ("halt", "resume", "close"):
        assert f"    {command} " in result.stdout


@pytest.mark.parametrize("argv", [["halt"], ["resume"], ["close", "1"]])
def test_without_an_account_id_exits_2_before_touching_the_database(
    argv: list[str], tmp_path: Path
) -> None:
    data_dir = tmp_path / "pgdata"
    result = _spreadwatch(*argv, "--data-dir", str(data_dir), cwd=tmp_path, env=_clean_env())
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("spreadwatch: error: broker account id is not set")
    assert "TRADIER_ACCOUNT_ID" in line
    assert not data_dir.exists()  # no embedded server was started
