"""``spreadwatch bench``: the benchmarks of issue 6, as ``python -m bench`` runs them.

Every benchmark runs in a process of its own against the simulator and an embedded PostgreSQL
of its own (see :mod:`bench.runner`); the command reads no configuration, so a config file or
environment meant for a live engine cannot change what is measured.
"""

from __future__ import annotations

import argparse

from engine.config import Config

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from bench.runner import add_arguments

    parser = subparsers.add_parser(
        "bench",
        help="run the benchmarks, print one table, write bench/results/latest.json",
        description="Run the benchmarks (tick -> order latency, throughput, core cost, scale "
        "and memory, audit under load, reactive versus polled exits), print one table of "
        "figures beside their targets, and write bench/results/latest.json.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=_bench, needs_config=False)


def _bench(args: argparse.Namespace, config: Config) -> int:
    from bench.runner import execute

    return execute(args)
