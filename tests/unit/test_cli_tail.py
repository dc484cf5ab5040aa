"""``spreadwatch tail``: files and stdin to the end, ``-f`` across growth, truncation and
rotation (autojump clock, real files), and the command as a user runs it (a subprocess)."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
from datetime import UTC
from functools import partial
from pathlib import Path

import pytest
import trio

from engine.cli_tail import TailStatistics, tail, use_color
from engine.errors import SpreadwatchError
from engine.logview import LogFilter, ViewOptions

SAMPLE = Path(__file__).parent / "data" / "engine_log_sample.jsonl"
SAMPLE_BYTES = SAMPLE.read_bytes()
SAMPLE_LINES = SAMPLE_BYTES.splitlines(keepends=True)
EXIT_DECIDED_TEXT = (
    "01:24:59.138 INFO     position_watcher position_watcher.exit_decided trade_id=1 "
    "rule=stop_loss action=FULL quantity=2 mark_close_price=1.09 pnl=-0.64 "
    "rules_fired=[stop_loss] dry_run=true"
)
MALFORMED = [b"Traceback (most recent call last):\n", b"[1, 2]\n", b'{"ts": "x"}\n']


class _ChannelWriter:
    """An output whose flushes arrive on a channel, so a test can wait for them."""

    def __init__(self, send: trio.MemorySendChannel[bytes]) -> None:
        self._send = send
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            self._send.send_nowait(bytes(self._buffer))
            self._buffer.clear()


class _Trickle:
    """Standard input that hands out a few bytes at a time, cutting lines anywhere."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._step = step

    def read1(self, size: int = -1, /) -> bytes:
        piece, self._data = self._data[: self._step], self._data[self._step :]
        return piece


async def _receive_lines(receive: trio.MemoryReceiveChannel[bytes], count: int) -> list[bytes]:
    lines: list[bytes] = []
    pending = b""
    while len(lines) < count:
        pending += await receive.receive()
        *done, pending = pending.split(b"\n")
        lines.extend(line + b"\n" for line in done)
    assert pending == b"" and len(lines) == count
    return lines


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


async def _tail_to_bytes(
    source: str, options: ViewOptions, stdin: object = None
) -> tuple[bytes, TailStatistics]:
    out = io.BytesIO()
    stats = await tail(source, options=options, stdin=stdin, out=out)  # type: ignore[arg-type]
    return out.getvalue(), stats


# ---- to the end of a file or of stdin --------------------------------------------------------


async def test_a_file_is_formatted_to_its_end_with_malformed_lines_as_they_are(
    tmp_path: Path,
) -> None:
    path = tmp_path / "engine.log"
    cut = SAMPLE_LINES[16][:30]  # the engine died mid-line: no newline, not JSON
    path.write_bytes(b"".join(SAMPLE_LINES[:17]) + b"".join(MALFORMED) + cut)
    with trio.fail_after(10):
        out, stats = await _tail_to_bytes(str(path), ViewOptions(tz=UTC))
    lines = out.splitlines(keepends=True)
    assert len(lines) == 17 + 3 + 1
    assert lines[0] == (
        b"01:24:41.778 INFO     engine           engine.starting account_id=VA00000001 "
        b"rest_url=http://127.0.0.1:41395/v1 dry_run=true\n"
    )
    assert lines[16] == EXIT_DECIDED_TEXT.encode() + b"\n"
    assert all(re.match(rb"\d\d:\d\d:\d\d\.\d{3} (INFO|WARNING) ", line) for line in lines[:17])
    assert lines[17:20] == MALFORMED
    assert lines[20] == cut + b"\n"
    assert stats == TailStatistics(lines=21, shown=21, malformed=4)


async def test_json_output_is_the_input_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "engine.log"
    path.write_bytes(SAMPLE_BYTES + b"".join(MALFORMED))
    with trio.fail_after(10):
        out, stats = await _tail_to_bytes(str(path), ViewOptions(json=True))
        assert out == SAMPLE_BYTES + b"".join(MALFORMED)
        assert stats == TailStatistics(lines=45, shown=45, malformed=3)
        only_trade = ViewOptions(json=True, filter=LogFilter(trades=("1",), min_level="info"))
        out, stats = await _tail_to_bytes(str(path), only_trade)
    assert out == b"".join(
        [line for line in SAMPLE_LINES if re.search(rb'"trade_id":1[,}]', line)] + MALFORMED
    )
    assert stats == TailStatistics(lines=45, shown=8, malformed=3)


async def test_stdin_is_read_to_its_end_even_in_pieces_that_cut_lines() -> None:
    options = ViewOptions(json=True)
    with trio.fail_after(10):
        out, stats = await _tail_to_bytes("-", options, _Trickle(SAMPLE_BYTES, step=7))
    assert out == SAMPLE_BYTES
    assert stats == TailStatistics(lines=42, shown=42, malformed=0)
    with trio.fail_after(10):
        out, _ = await _tail_to_bytes(
            "-",
            ViewOptions(tz=UTC, filter=LogFilter(events=("*.exit_decided",))),
            io.BytesIO(SAMPLE_BYTES),
        )
    assert out == EXIT_DECIDED_TEXT.encode() + b"\n"


@pytest.mark.parametrize("name", ["missing.log", "."])
async def test_a_file_that_cannot_be_read_is_one_clear_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(SpreadwatchError, match=f"^cannot read {path}: "):
        await tail(str(path), options=ViewOptions(), follow=True, out=io.BytesIO())


# ---- -f ----------------------------------------------------------------------------------------


async def test_follow_prints_lines_as_they_are_appended_and_waits_for_whole_lines(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    path = tmp_path / "engine.log"
    path.write_bytes(b"".join(SAMPLE_LINES[:3]))
    send, receive = trio.open_memory_channel[bytes](100)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    tail,
                    str(path),
                    options=ViewOptions(json=True),
                    follow=True,
                    interval=0.1,
                    out=_ChannelWriter(send),
                )
            )
            assert await _receive_lines(receive, 3) == SAMPLE_LINES[:3]

            _append(path, SAMPLE_LINES[3] + SAMPLE_LINES[4])
            assert await _receive_lines(receive, 2) == SAMPLE_LINES[3:5]

            # Half a line (a writer caught mid-write) is held back however often it polls...
            _append(path, SAMPLE_LINES[5][:40])
            before = trio.current_time()
            await trio.sleep(1.0)  # virtual time: ten polls go by
            with pytest.raises(trio.WouldBlock):
                receive.receive_nowait()
            # ...and comes out whole once the rest arrives.
            _append(path, SAMPLE_LINES[5][40:])
            assert await _receive_lines(receive, 1) == [SAMPLE_LINES[5]]
            assert trio.current_time() - before < 1.2  # seen within a poll or two
            nursery.cancel_scope.cancel()


async def test_follow_starts_over_after_truncation_and_rotation(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    path = tmp_path / "engine.log"
    rotated = tmp_path / "engine.log.1"
    path.write_bytes(b"".join(SAMPLE_LINES[:4]))
    send, receive = trio.open_memory_channel[bytes](100)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    tail,
                    str(path),
                    options=ViewOptions(json=True),
                    follow=True,
                    interval=0.1,
                    out=_ChannelWriter(send),
                )
            )
            assert await _receive_lines(receive, 4) == SAMPLE_LINES[:4]

            # copytruncate-style rotation: same file, emptied, written from the start again.
            path.write_bytes(SAMPLE_LINES[10])
            assert await _receive_lines(receive, 1) == [SAMPLE_LINES[10]]

            # Rename-style rotation: the old file is moved away, the writer still adds a line
            # to it, and only later is a new file created under the name.
            path.rename(rotated)
            await trio.sleep(1.0)  # virtual time: polls that find no file at the path
            _append(rotated, SAMPLE_LINES[11])
            assert await _receive_lines(receive, 1) == [SAMPLE_LINES[11]]
            path.write_bytes(SAMPLE_LINES[12] + SAMPLE_LINES[13])
            assert await _receive_lines(receive, 2) == SAMPLE_LINES[12:14]

            _append(path, SAMPLE_LINES[14])
            assert await _receive_lines(receive, 1) == [SAMPLE_LINES[14]]
            _append(rotated, b"a line the old file got too late\n")
            await trio.sleep(1.0)
            with pytest.raises(trio.WouldBlock):  # the old file is no longer read
                receive.receive_nowait()
            nursery.cancel_scope.cancel()


# ---- colour --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "isatty", "environ", "expected"),
    [
        ("auto", True, {}, True),
        ("auto", False, {}, False),
        ("auto", True, {"NO_COLOR": "1"}, False),
        ("auto", True, {"NO_COLOR": ""}, True),  # no-color.org: set *and non-empty*
        ("always", False, {"NO_COLOR": "1"}, True),
        ("never", True, {}, False),
    ],
)
def test_colour_choice(choice: str, isatty: bool, environ: dict[str, str], expected: bool) -> None:
    assert use_color(choice, isatty=isatty, environ=environ) is expected


# ---- the command, as a user runs it -----------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPREADWATCH_", "TRADIER_"))
        and key not in {"DATABASE_URL", "NO_COLOR"}
    }
    env.update(extra)
    return env


def _spreadwatch(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=cwd,
        env=_env() if env is None else env,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_command_reads_a_file_to_the_end_with_filters_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "engine.log"
    path.write_bytes(SAMPLE_BYTES + MALFORMED[0])
    done = _spreadwatch(
        "tail", "--utc", "--trade", "1", "--event", "position_watcher.*", str(path), cwd=tmp_path
    )
    assert done.returncode == 0
    assert done.stdout == EXIT_DECIDED_TEXT.encode() + b"\n" + MALFORMED[0]
    assert (
        done.stderr
        == b"spreadwatch tail: 1 of 43 line(s) were not log records (shown as they are)\n"
    )

    since = _spreadwatch(
        "tail",
        str(path),
        "--json",
        "--level",
        "warning",
        "--since",
        "2026-11-21T01:25:00Z",
        cwd=tmp_path,
    )
    assert since.returncode == 0
    warnings_after = [line for line in SAMPLE_LINES[17:] if b'"level":"warning"' in line]
    assert len(warnings_after) == 2
    assert since.stdout == b"".join(warnings_after) + MALFORMED[0]


def test_command_reads_stdin_with_dash(tmp_path: Path) -> None:
    done = _spreadwatch("tail", "-", "--json", "--symbol", "QQQ", cwd=tmp_path, stdin=SAMPLE_BYTES)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"".join(line for line in SAMPLE_LINES if b'"QQQ",' in line)
    assert done.stdout.count(b"\n") == 1


def test_a_missing_file_is_one_line_on_stderr_and_exit_1(tmp_path: Path) -> None:
    done = _spreadwatch("tail", "-f", "missing.log", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == b""
    assert (
        done.stderr == b"spreadwatch: error: cannot read missing.log: No such file or directory\n"
    )


def test_a_bad_since_is_a_usage_error(tmp_path: Path) -> None:
    done = _spreadwatch("tail", "--since", "yesterday", str(SAMPLE), cwd=tmp_path)
    assert done.returncode == 2
    assert b"argument --since: not a time: 'yesterday'" in done.stderr


def test_a_broken_config_does_not_stop_tail(tmp_path: Path) -> None:
    broken = _env(SPREADWATCH_CONFIG=str(tmp_path / "absent.toml"), SPREADWATCH_NO_SUCH_KEY="1")
    # The same environment stops a command that reads the configuration...
    assert _spreadwatch("db", "status", cwd=tmp_path, env=broken).returncode == 2
    # ...but not tail.
    done = _spreadwatch("tail", "--json", str(SAMPLE), cwd=tmp_path, env=broken)
    assert done.returncode == 0, done.stderr
    assert done.stdout == SAMPLE_BYTES


def _run_on_a_terminal(args: list[str], env: dict[str, str], cwd: Path) -> bytes:
    controller, terminal = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=cwd,
        env=env,
        stdout=terminal,
        stderr=subprocess.DEVNULL,
    ) as proc:
        os.close(terminal)
        chunks = []
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0
    os.close(controller)
    return b"".join(chunks)


def test_colour_on_a_terminal_unless_no_color_or_a_pipe(tmp_path: Path) -> None:
    args = ["tail", "--level", "warning", str(SAMPLE)]
    coloured = _run_on_a_terminal(args, _env(), tmp_path)
    assert b"\x1b[33mWARNING \x1b[0m" in coloured
    plain = _run_on_a_terminal(args, _env(NO_COLOR="1"), tmp_path)
    assert b"\x1b" not in plain and b"WARNING  quote_stream" in plain
    piped = _spreadwatch(*args, cwd=tmp_path)
    assert b"\x1b" not in piped.stdout and piped.stdout.count(b"WARNING ") == 4
    forced = _spreadwatch(*args, "--color", "always", cwd=tmp_path, env=_env(NO_COLOR="1"))
    assert forced.stdout.count(b"\x1b[33mWARNING \x1b[0m") == 4


def test_a_reader_that_goes_away_ends_it_quietly(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_bytes(SAMPLE_BYTES * 200)  # ~1.7 MB: far more than a pipe holds
    with subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "tail", str(path)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert b"engine.starting" in proc.stdout.readline()
        proc.stdout.close()  # like `| head -1`
        assert proc.wait(timeout=60) == 0
        assert proc.stderr.read() == b""
