"""One benchmark run on its own (``python -m bench.latency``): the entry every module shares.

``python -m bench`` runs them all and prints one table (:mod:`bench.runner`); a module run by
itself prints its own detailed report. Either way: ``--size full|tiny`` and ``--seed``, the log
(the engine's, when the benchmark runs one) to ``bench/results/<name>.log``, the result to
``bench/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

__all__ = ["RESULTS_DIR", "main"]

RESULTS_DIR: Final = Path(__file__).parent / "results"


def main(
    name: str,
    doc: str | None,
    run: Callable[..., dict[str, Any]],
    report: Callable[[dict[str, Any]], Iterable[str]],
) -> None:
    """Parse the command line, run ``run(size=, seed=)``, write its result and log, print
    ``report(result)`` a line at a time."""
    from bench.runner import SIZES
    from engine.log import configure_logging

    parser = argparse.ArgumentParser(
        prog=f"python -m bench.{name}", description=(doc or "").splitlines()[0]
    )
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with (RESULTS_DIR / f"{name}.log").open("wb") as log:
        configure_logging(level="info", stream=log)
        result = run(size=args.size, seed=args.seed)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    for line in report(result):
        print(line)


def milliseconds(value: float | None) -> str:
    """A latency figure for a table: two decimals, ``-`` when there is none."""
    return "-" if value is None else f"{value:.2f}"
