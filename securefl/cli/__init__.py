"""The ``securefl`` command line.

Each sub-command lives in its own module ``securefl.cli.<name>`` exposing
``register(subparsers)`` (which adds its parser and sets ``func``) and
``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from securefl.errors import SecureFLError

COMMANDS = ["sum_demo", "simulate", "audit", "conformance", "bench"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="securefl",
        description="Private federated learning: DP-SGD clients, secure aggregation, audit.",
    )
    from securefl import __version__

    parser.add_argument("--version", action="version", version=f"securefl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"securefl.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the sub-command.  Returns the exit
    status; a :class:`SecureFLError` is printed as one clear line (status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SecureFLError as exc:
        print(f"securefl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("securefl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
