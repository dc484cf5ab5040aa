"""``spreadwatch tail [FILE|-] [-f]``: the engine's JSON log as one readable line per event.

Reads a log file (or standard input, ``-``), keeps the lines the filters ask for and prints
each as ``HH:MM:SS.mmm LEVEL actor event key=value ...`` (:mod:`engine.logview`), or, with
``--json``, exactly as it was. Lines that are not log records are printed as they are and
counted; the count goes to stderr at the end. ``-f`` keeps reading as the file grows, and
carries on from the start when the file is truncated or replaced (log rotation), like
``tail -F``.

It needs no database, no broker and no configuration: it sets ``needs_config=False`` so a
broken config file or environment cannot stop anyone from reading a log.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final, Protocol, cast

import msgspec
import trio

from engine.config import Config
from engine.errors import SpreadwatchError
from engine.log import LEVELS
from engine.logview import LogFilter, ViewOptions, parse_since, render_line, since_cutoff

__all__ = ["TailStatistics", "register", "tail", "use_color"]

_CHUNK: Final = 64 * 1024
_DEFAULT_INTERVAL: Final = 0.25


class TailStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counts for one run: lines read, lines printed, and malformed lines (printed as is)."""

    lines: int
    shown: int
    malformed: int


class Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...
    def flush(self) -> object: ...


class ChunkReader(Protocol):
    def read1(self, size: int = ..., /) -> bytes: ...


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "tail",
        help="show the engine's JSON log as readable lines, with filters",
        description="Show spreadwatch's JSON log lines as one readable line per event. "
        "Lines that are not log records are shown as they are.",
    )
    parser.add_argument("file", nargs="?", default="-", metavar="FILE", help="log file; - is stdin")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep reading as the file grows (and rotates)"
    )
    parser.add_argument("--trade", action="append", default=[], help="only this trade_id")
    parser.add_argument(
        "--symbol", action="append", default=[], help="only this symbol (symbol or symbols field)"
    )
    parser.add_argument(
        "--event", action="append", default=[], metavar="GLOB", help="e.g. 'order_router.*'"
    )
    parser.add_argument("--level", choices=LEVELS, default="debug", help="minimum level")
    parser.add_argument(
        "--since", type=_since_arg, default=None, metavar="TIME", help="10m, 2h, 14:30, ISO time"
    )
    parser.add_argument("--json", action="store_true", help="print kept lines unchanged")
    parser.add_argument("--utc", action="store_true", help="show (and read --since) in UTC")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    parser.add_argument(
        "--interval",
        type=_positive_seconds,
        default=_DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"how often -f looks for more (default {_DEFAULT_INTERVAL})",
    )
    parser.set_defaults(handler=_tail, needs_config=False)


def _since_arg(text: str) -> object:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return seconds


def use_color(choice: str, *, isatty: bool, environ: Mapping[str, str]) -> bool:
    """``always``/``never`` win; ``auto`` means a terminal and no ``NO_COLOR`` (no-color.org)."""
    if choice != "auto":
        return choice == "always"
    return isatty and not environ.get("NO_COLOR")


async def _tail(args: argparse.Namespace, config: Config) -> int:
    out = sys.stdout.buffer
    tz = UTC if args.utc else None
    since = args.since
    options = ViewOptions(
        filter=LogFilter(
            trades=tuple(args.trade),
            symbols=tuple(args.symbol),
            events=tuple(args.event),
            min_level=args.level,
            since=None if since is None else since_cutoff(since, now=datetime.now(UTC), tz=tz),
        ),
        json=args.json,
        color=not args.json and use_color(args.color, isatty=out.isatty(), environ=os.environ),
        tz=tz,
    )
    try:
        stats = await tail(
            args.file,
            options=options,
            follow=args.follow,
            interval=args.interval,
            # A process may run without any stdin at all (sys.stdin is None then).
            stdin=cast(ChunkReader | None, getattr(sys.stdin, "buffer", None)),
            out=out,
        )
    except BrokenPipeError:
        # The reader went away (`| head`): that ends the job. Point stdout at /dev/null so the
        # interpreter's final flush does not complain about the same broken pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if stats.malformed:
        print(
            f"spreadwatch tail: {stats.malformed} of {stats.lines} line(s) were not log records "
            "(shown as they are)",
            file=sys.stderr,
        )
    return 0


async def tail(
    source: str,
    *,
    options: ViewOptions,
    follow: bool = False,
    interval: float = _DEFAULT_INTERVAL,
    stdin: ChunkReader | None = None,
    out: Writer,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> TailStatistics:
    """Print ``source`` (a path, or ``-`` for ``stdin``) through ``options`` to ``out``.

    Returns at end of input; with ``follow`` (files only) it runs until cancelled. Output is
    flushed after each chunk read, so a follower sees lines as they come. Started
    (``task_status``) once the file is open, so ``nursery.start`` sees a missing file as a
    :class:`SpreadwatchError`.
    """
    printer = _Printer(options, out)
    if source == "-":
        if stdin is None:
            raise SpreadwatchError("cannot read standard input: there is none")
        task_status.started()
        await _read_stream(stdin, printer)
    else:
        with _FollowedFile(Path(source)) as file:
            task_status.started()
            await _read_file(file, printer, follow=follow, interval=interval)
    printer.finish()
    return printer.statistics()


async def _read_stream(stream: ChunkReader, printer: _Printer) -> None:
    while True:
        # A thread, because a pipe or a terminal can block for as long as its writer likes.
        chunk = await trio.to_thread.run_sync(stream.read1, _CHUNK, abandon_on_cancel=True)
        if not chunk:
            return
        printer.feed(chunk)


async def _read_file(
    file: _FollowedFile, printer: _Printer, *, follow: bool, interval: float
) -> None:
    # Plain reads on the event loop: reading what a regular file already holds does not block
    # for long, and polling (not inotify) is what works on every filesystem and in containers.
    while True:
        chunk = file.read()
        if chunk:
            printer.feed(chunk)
        elif not follow:
            return
        else:
            leftover = file.reopen_if_rotated()
            if leftover is None:
                await trio.sleep(interval)
                continue
            printer.feed(leftover)
            printer.finish()  # a line cut short by the rotation is shown as it is
        await trio.lowlevel.checkpoint()  # a big file must not hold off Ctrl-C


class _FollowedFile:
    """An open log file that notices when its path is truncated or replaced (rotation).

    Invariant: ``_file`` is open, and is the file that ``path`` named when it was opened.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = self._open()

    def __enter__(self) -> _FollowedFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    def _open(self) -> IO[bytes]:
        try:
            return self.path.open("rb")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise SpreadwatchError(f"cannot read {self.path}: {reason}") from exc

    def read(self) -> bytes:
        return self._file.read(_CHUNK)

    def reopen_if_rotated(self) -> bytes | None:
        """After reading to the end: ``None`` if nothing changed; else what was left to read of
        the old file (the new one, or the truncated one from its start, is read next)."""
        opened = os.fstat(self._file.fileno())
        if opened.st_size < self._file.tell():
            self._file.seek(0)
            return b""
        try:
            named = os.stat(self.path)
        except OSError:
            return None  # moved away and not yet recreated: keep the old file open
        if (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino):
            return None
        try:
            new_file = self.path.open("rb")
        except OSError:
            return None  # gone again between stat and open; try on the next poll
        # The writer may have added lines to the old file after our last read: keep them.
        leftover = self._file.read()
        self._file.close()
        self._file = new_file
        return leftover


class _Printer:
    """Splits input into lines, renders each, writes the output; counts what it saw.

    Invariant: ``_partial`` holds the bytes after the last newline fed (an unfinished line).
    """

    def __init__(self, options: ViewOptions, out: Writer) -> None:
        self._options = options
        self._out = out
        self._partial = b""
        self._lines = 0
        self._shown = 0
        self._malformed = 0

    def feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._print(line + b"\n")
        self._out.flush()

    def finish(self) -> None:
        """Print an unfinished last line (input that does not end in a newline)."""
        if self._partial:
            line, self._partial = self._partial, b""
            self._print(line)
            self._out.flush()

    def _print(self, line: bytes) -> None:
        rendered = render_line(line, self._options)
        self._lines += 1
        self._malformed += rendered.malformed
        if rendered.output is not None:
            self._shown += 1
            self._out.write(rendered.output)

    def statistics(self) -> TailStatistics:
        return TailStatistics(lines=self._lines, shown=self._shown, malformed=self._malformed)
