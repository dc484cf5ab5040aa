"""``spreadwatch run`` failing to start: one line on stderr saying what to do (issue 7).

Each case runs the real command as a process, against a real simulator where a broker is
needed, and checks the exit status, that stderr is exactly one ``spreadwatch: error:`` line (no
traceback), and that the line names the setting to fix.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import trio

from sim.server import SimHandle, serve_simulator
from tests.system.live import load
from tests.system.test_live_safety import engine_env

pytestmark = pytest.mark.system

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
async def sim_handle() -> AsyncIterator[SimHandle]:
    async with trio.open_nursery() as nursery:
        handle: SimHandle = await nursery.start(
            lambda task_status: serve_simulator(load("live_b_close.toml"), task_status=task_status)
        )
        yield handle
        nursery.cancel_scope.cancel()


def _env(tmp_path: pathlib.Path, **settings: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPREADWATCH_", "TRADIER_")) and key != "DATABASE_URL"
    }
    env["SPREADWATCH_DATABASE__DATA_DIR"] = str(tmp_path / "pgdata")
    env["SPREADWATCH_HTTP__PORT"] = "0"
    env.update(settings)
    return env


def _sim_env(handle: SimHandle, tmp_path: pathlib.Path, **settings: str) -> dict[str, str]:
    """The engine pointed at the simulator (as the live tests start it), then ``settings``."""
    env = engine_env(handle, tmp_path / "pgdata") | {"SPREADWATCH_HTTP__PORT": "0"}
    return env | settings


async def _run(env: dict[str, str]) -> tuple[int, str]:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "engine.cli", "run"],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stderr.decode()


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("spreadwatch: error: "), stderr
    return lines[0]


async def test_no_token_names_the_variable_to_set(tmp_path: pathlib.Path) -> None:
    code, stderr = await _run(_env(tmp_path, TRADIER_ACCOUNT_ID="VA1"))
    line = _one_line(stderr)
    assert code == 2
    assert "no broker token: set TRADIER_TOKEN" in line
    assert not (tmp_path / "pgdata").exists(), "nothing is started before the check"


async def test_no_account_names_the_variable_to_set(tmp_path: pathlib.Path) -> None:
    code, stderr = await _run(_env(tmp_path, TRADIER_TOKEN="t"))
    assert code == 2
    assert "no broker account: set TRADIER_ACCOUNT_ID" in _one_line(stderr)


async def test_a_refused_token_says_to_check_it(
    sim_handle: SimHandle, tmp_path: pathlib.Path
) -> None:
    secret = "tok-not-this-accounts-8c1f"
    code, stderr = await _run(_sim_env(sim_handle, tmp_path, TRADIER_TOKEN=secret))
    line = _one_line(stderr)
    assert code == 2
    assert "refused the token" in line and "check TRADIER_TOKEN" in line
    assert secret not in stderr, "the token itself is never printed"
    assert not (tmp_path / "pgdata").exists(), "nothing is started before the check"


async def test_a_wrong_account_lists_the_tokens_accounts(
    sim_handle: SimHandle, tmp_path: pathlib.Path
) -> None:
    code, stderr = await _run(_sim_env(sim_handle, tmp_path, TRADIER_ACCOUNT_ID="VA99999999"))
    line = _one_line(stderr)
    assert code == 2
    assert line.endswith(
        f"account VA99999999 is not one of this token's accounts ({sim_handle.account_id}): "
        "set TRADIER_ACCOUNT_ID to one of them"
    )
    assert not (tmp_path / "pgdata").exists()


async def test_an_unreachable_broker_names_the_url_setting(tmp_path: pathlib.Path) -> None:
    with trio.socket.socket() as closed:  # a port nobody listens on
        await closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code, stderr = await _run(
        _env(
            tmp_path,
            TRADIER_TOKEN="t",
            TRADIER_ACCOUNT_ID="VA1",
            SPREADWATCH_BROKER__REST_URL=f"http://127.0.0.1:{port}/v1",
        )
    )
    line = _one_line(stderr)
    assert code == 1
    assert f"cannot reach the broker at http://127.0.0.1:{port}/v1" in line
    assert "check broker.rest_url" in line


async def test_an_unreachable_database_says_what_to_check(
    sim_handle: SimHandle, tmp_path: pathlib.Path
) -> None:
    code, stderr = await _run(
        _sim_env(sim_handle, tmp_path, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    )
    line = _one_line(stderr)
    assert code == 1
    assert "cannot connect to PostgreSQL at 127.0.0.1:1" in line
    assert "check DATABASE_URL" in line and "unset it to use the embedded database" in line


async def test_a_bad_setting_names_the_key(tmp_path: pathlib.Path) -> None:
    code, stderr = await _run(
        _env(
            tmp_path,
            TRADIER_TOKEN="t",
            TRADIER_ACCOUNT_ID="VA1",
            SPREADWATCH_ENGINE__DRY_RUN="maybe",
        )
    )
    line = _one_line(stderr)
    assert code == 2
    assert "engine.dry_run" in line and "SPREADWATCH_ENGINE__DRY_RUN" in line
