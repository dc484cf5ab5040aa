"""``python -m sim sim ...`` / ``python -m sim scenario run ...``: the simulator's commands
without the engine's CLI (the same ones ``spreadwatch`` registers from :mod:`sim.cli`)."""

from __future__ import annotations

import argparse
import sys

import trio

from engine.errors import SpreadwatchError
from sim.cli import register, register_standalone_scenario

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(commands)
    register_standalone_scenario(commands)
    args = parser.parse_args(argv)
    try:
        return int(trio.run(args.handler, args, None))
    except SpreadwatchError as exc:
        print(f"sim: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
