"""Every benchmark, the figures it reports and their targets: the one table ``python -m bench``
runs from.

A benchmark is a module of ``bench`` with ``run(*, size: str, seed: int) -> dict`` (JSON-able).
Its entry here names the module and declares its figures: where each lives in ``run``'s result
(a :class:`Figure` path), its unit and its target. Adding a benchmark is one entry; a module not
present yet is skipped with a note, so the runner works while benchmarks are still being
written.

Paths are dotted keys into the result; a list is entered by position (``scaling.0``) or by a
member's field (``rates.rate=1000``: the element whose ``rate`` is 1000). A path that leads
nowhere gives no value (the table says ``n/a``): a size whose result lacks that point (tiny
sizes measure fewer points) is not an error.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ["BENCHMARKS", "Benchmark", "Figure", "by_name", "pick"]


@dataclass(frozen=True, slots=True)
class Figure:
    """One reported number. ``goal``: whether the target is a ceiling (``"max"``: at most) or a
    floor (``"min"``: at least); None with no target (reported, not judged)."""

    label: str
    path: str
    unit: str = ""
    target: float | None = None
    goal: Literal["max", "min"] | None = None

    def value(self, result: Mapping[str, Any]) -> float | None:
        found = pick(result, self.path)
        return (
            float(found) if isinstance(found, int | float) and not isinstance(found, bool) else None
        )

    def met(self, value: float | None) -> bool | None:
        """True/False against the target; None when there is no target or no value."""
        if value is None or self.target is None or self.goal is None:
            return None
        return value <= self.target if self.goal == "max" else value >= self.target


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str  # what --only takes
    module: str
    about: str  # one line
    figures: tuple[Figure, ...]

    def present(self) -> bool:
        """Whether the module exists (it may still be being written)."""
        return importlib.util.find_spec(self.module) is not None


def pick(result: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` in ``result`` (see the module docstring), or None."""
    node: Any = result
    for part in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list):
            field, equals, wanted = part.partition("=")
            if equals:
                node = next(
                    (m for m in node if isinstance(m, Mapping) and str(m.get(field)) == wanted),
                    None,
                )
            elif part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        else:
            return None
    return node


def format_value(value: float, unit: str) -> str:
    """A number as the table shows it: thousands separated, few decimals, with its unit."""
    if unit == "$":
        return f"${value:,.2f}"
    if abs(value) >= 1000 or value == int(value):
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:,.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip() if unit not in ("x", "%") else f"{text}{unit}"


_POLLS: Final = tuple(
    figure
    for cadence, label in ((60, "60 s"), (300, "300 s"))
    for figure in (
        Figure(
            f"poll every {label}: decision delay, median",
            f"cadences.poll_{cadence}.delay_seconds.median",
            "s",
        ),
        Figure(
            f"poll every {label}: extra slippage, median",
            f"cadences.poll_{cadence}.extra_slippage_usd.median",
            "$",
        ),
        Figure(
            f"poll every {label}: extra slippage, p95",
            f"cadences.poll_{cadence}.extra_slippage_usd.p95",
            "$",
        ),
    )
)

BENCHMARKS: Final[tuple[Benchmark, ...]] = (
    Benchmark(
        "latency",
        "bench.latency",
        "tick -> order over loopback, 1,000 spreads, background load (simulator's clock)",
        (
            Figure(
                "tick -> order p50 at 1,000/s", "rates.rate=1000.latency_ms.p50", "ms", 1.0, "max"
            ),
            Figure("tick -> order p99 at 1,000/s", "rates.rate=1000.latency_ms.p99", "ms"),
            Figure("tick -> order p50 at 10,000/s", "rates.rate=10000.latency_ms.p50", "ms"),
            Figure(
                "tick -> order p99 at 10,000/s", "rates.rate=10000.latency_ms.p99", "ms", 2.0, "max"
            ),
        ),
    ),
    Benchmark(
        "throughput",
        "bench.throughput",
        "highest quote rate with p99 tick -> order <= 10 ms and newest quotes delivered",
        (
            Figure(
                "sustained quote rate", "sustained_events_per_second", "events/s", 50_000, "min"
            ),
            Figure("simulator alone", "sim_alone_events_per_second", "events/s"),
        ),
    ),
    Benchmark(
        "core_cost",
        "bench.core_cost",
        "cost per market event, no network, against bare msgspec decoding in the same run",
        (
            Figure("core cost per event / bare decode", "headline.ratio_median", "x", 10.0, "max"),
            Figure("core cost per event", "headline.engine_ns_per_event", "ns"),
            Figure("per-event cost, most / fewest spreads", "scaling_growth", "x", 1.5, "max"),
        ),
    ),
    Benchmark(
        "scale",
        "bench.scale",
        "RSS per watched spread and time to every watcher live, 100 / 1,000 / 10,000 spreads",
        (
            Figure(
                "RSS per watched spread (most spreads)",
                "headline.rss_bytes_per_spread",
                "B",
                10_240,
                "max",
            ),
            Figure(
                "start to every watcher live at 1,000",
                "points.spreads=1000.all_live_seconds",
                "s",
                3.0,
                "max",
            ),
            Figure("start to every watcher live (most spreads)", "headline.all_live_seconds", "s"),
        ),
    ),
    Benchmark(
        "audit_load",
        "bench.audit_load",
        "audit records committed per second with group commit; tick -> order p99 beside it",
        (
            Figure(
                "audit records into PostgreSQL",
                "records_per_second_median",
                "records/s",
                50_000,
                "min",
            ),
            Figure("PostgreSQL CPU per record", "server_cpu_us_per_record", "us"),
            Figure(
                "tick -> order p99 change under audit load",
                "under_load.p99_change_percent",
                "%",
                10.0,
                "max",
            ),
        ),
    ),
    Benchmark(
        "reactive_vs_polled",
        "bench.reactive_vs_polled",
        "exits decided on every tick against polls every 60 s and 300 s (seeded paths)",
        _POLLS,
    ),
    Benchmark(
        "sim_stream",
        "bench.sim_stream",
        "quote events/s the simulator's market stream delivers to one connection",
        (
            Figure(
                "simulator stream to one connection", "events_per_second", "events/s", 50_000, "min"
            ),
        ),
    ),
)


def by_name(name: str) -> Benchmark:
    """The benchmark called ``name``; KeyError naming the known ones otherwise."""
    for benchmark in BENCHMARKS:
        if benchmark.name == name:
            return benchmark
    known = ", ".join(b.name for b in BENCHMARKS)
    raise KeyError(f"no benchmark {name!r} (known: {known})")
