"""The ``securefl`` command line.

Each sub-command lives in its own module ``securefl.cli.<name>`` exposing
``register(subparsers)`` (which adds its parser and sets ``func``) and
``run(args) -> int``.

Output piped into a reader that stops early (``securefl conformance --list |
head``) ends quietly: no traceback, exit status 141 (128 + SIGPIPE, what a
program killed by SIGPIPE reports, so ``set -o pipefail`` still sees it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence

from securefl._extras import missing_extra
from securefl.errors import SecureFLError

COMMANDS = ["sum_demo", "simulate", "audit", "conformance", "bench"]

EXIT_BROKEN_PIPE = 141
"""Exit status when the reader of standard output went away (128 + SIGPIPE)."""


_RST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def help_text(doc: str | None) -> str:
    """A module docstring as ``--help`` text: reStructuredText markup
    (double backquotes, ``:class:`` roles) removed, the words kept."""
    text = _RST_ROLE.sub(r"\1", doc or "")
    return text.replace("``", "")


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
    """Entry point: parse ``argv`` and run the sub-command.

    Returns the exit status: a :class:`SecureFLError` is printed as one clear
    line (status 2), and so is a missing optional dependency, with the extra
    that installs it (``pip install 'securefl[train]'``); a closed standard
    output (``| head``) ends quietly with :data:`EXIT_BROKEN_PIPE`."""
    command = "securefl"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        command = f"securefl {args.command}"
        status = int(args.func(args) or 0)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except SecureFLError as exc:
        print(f"securefl: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        explained = missing_extra(command, exc)
        if explained is None:
            raise
        print(f"securefl: error: {explained}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("securefl: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point standard output at the null device, so that the interpreter's
    final flush of what is still buffered does not raise a second
    BrokenPipeError (the pattern of the Python ``signal`` documentation)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced stdout (tests): nothing to do
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
