"""What the container runs, without a container: ``spreadwatch run`` with the Containerfile's
environment (data directory and port moved to this test's), and its ``HEALTHCHECK`` command,
``spreadwatch health``, against the simulator. The check passes while the engine runs, the
readiness check passes once the feed and the mirror are live, SIGTERM stops it with status 0,
and the check then fails."""

from __future__ import annotations

import pathlib
import signal
import socket
import subprocess
import sys

import pytest
import trio

from sim.server import SimHandle, serve_simulator
from tests.system.live import load, wait_for
from tests.system.test_live_safety import engine_env, engine_process, logged, scratch_dir
from tests.unit.test_containerfile import _env, _stages

pytestmark = pytest.mark.system

REPO = pathlib.Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _health(env: dict[str, str], *flags: str) -> tuple[int, str]:
    done = await trio.run_process(
        [sys.executable, "-m", "engine.cli", "health", *flags],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stdout.decode().strip()


async def test_the_images_command_and_healthcheck_work_and_sigterm_exits_0() -> None:
    image_env = {k: v for k, v in _env(_stages()[-1]).items() if k.startswith("SPREADWATCH_")}
    with trio.fail_after(90), scratch_dir() as scratch:
        log_path = scratch / "engine.log"
        async with trio.open_nursery() as nursery:
            handle: SimHandle = await nursery.start(
                lambda task_status: serve_simulator(
                    load("live_b_close.toml"), task_status=task_status
                )
            )
            env = (
                engine_env(handle, scratch / "pgdata")
                | image_env
                | {
                    "SPREADWATCH_DATABASE__DATA_DIR": str(scratch / "pgdata"),
                    "SPREADWATCH_HTTP__PORT": str(_free_port()),
                }
            )
            async with engine_process(env, log_path) as engine:

                async def healthy() -> bool:
                    return (await _health(env))[0] == 0

                async def ready() -> bool:
                    return (await _health(env, "--ready"))[0] == 0

                await wait_for(healthy, timeout=40, what="spreadwatch health to pass")
                await wait_for(ready, timeout=30, what="spreadwatch health --ready to pass")
                code, line = await _health(env)
                assert code == 0 and line.startswith("healthy: http://127.0.0.1:"), line
                engine.send_signal(signal.SIGTERM)
                with trio.fail_after(25):
                    await engine.wait()
            assert engine.returncode == 0, log_path.read_text()
            assert logged(log_path, "engine.stopped")
            code, line = await _health(env)
            nursery.cancel_scope.cancel()
    assert code == 1 and line.startswith("unhealthy: no answer from"), line
