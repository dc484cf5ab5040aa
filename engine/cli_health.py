"""``spreadwatch health``: ask a running engine's own endpoint whether it is alive (or ready).

The container's ``HEALTHCHECK`` runs it: it reads the same configuration as ``run`` (so
``SPREADWATCH_HTTP__PORT`` moves both), asks ``/healthz`` (``--ready``: ``/readyz``) on
loopback, prints one line and exits 0 when the answer is 200, 1 otherwise. Nothing to install
in the image (no curl): the engine's own package does it.
"""

from __future__ import annotations

import argparse

from engine.config import Config

__all__ = ["health_url", "register"]

TIMEOUT_SECONDS = 3.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = subparsers.add_parser(
        "health",
        help="check a running engine's /healthz (exit 0 when healthy)",
        description="Ask the engine's HTTP endpoint on this machine whether it is alive "
        "(/healthz) or, with --ready, ready (/readyz). Exit status 0 when it answers 200.",
    )
    health.add_argument("--ready", action="store_true", help="ask /readyz instead of /healthz")
    health.set_defaults(handler=_health)


def health_url(config: Config, *, ready: bool = False) -> str:
    """The endpoint's URL as seen from this machine (a wildcard bind is reached on loopback)."""
    host = config.http.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.http.port}/{'readyz' if ready else 'healthz'}"


def _health(args: argparse.Namespace, config: Config) -> int:
    import httpx

    url = health_url(config, ready=args.ready)
    try:
        answer = httpx.get(url, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        print(f"unhealthy: no answer from {url} ({type(exc).__name__})")
        return 1
    verdict = "healthy" if answer.status_code == 200 else "unhealthy"
    print(f"{verdict}: {url} answered {answer.status_code} {answer.text.strip()[:200]}")
    return 0 if answer.status_code == 200 else 1
