"""``securefl conformance``: run the secagg v1 test vectors and scenario
cases against a client and server implementation (securefl's own by
default, or adapters given as ``module:factory``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securefl.errors import ConfigurationError

if TYPE_CHECKING:
    from securefl.conformance.cases import Target


def register(subparsers: Any) -> None:
    """Add the ``conformance`` sub-command."""
    parser = subparsers.add_parser(
        "conformance",
        help="run the secure aggregation conformance suite",
        description="Run the protocol test vectors and the adversarial scenario cases"
                    " (numbered by SPEC.md section) against an implementation.  Exit status"
                    " is 1 if any case fails, 2 if the options are unusable (no case"
                    " selected, a report file that cannot be written).",
    )
    parser.add_argument("--client", metavar="MODULE:FACTORY",
                        help="client adapter factory (default: securefl's ClientSession)")
    parser.add_argument("--server", metavar="MODULE:FACTORY",
                        help="server adapter factory (default: securefl's ServerSession)")
    parser.add_argument("--primitives", metavar="MODULE:FACTORY",
                        help="primitives adapter factory for the primitive vectors"
                             " (default: securefl's; 'none' skips them)")
    parser.add_argument("--vectors", metavar="DIR", type=Path, default=None,
                        help="directory of vector files (default: the bundled ones)")
    parser.add_argument("--only", choices=("vectors", "scenarios"),
                        help="run only the vectors or only the scenarios")
    parser.add_argument("-k", dest="patterns", action="append", default=[], metavar="PATTERN",
                        help="select cases (repeatable; a case runs if any PATTERN selects it)."
                             " A PATTERN starting with a digit names ids by whole components:"
                             " '10' is SPEC section 10 with its subsections 10.x, '10.1/3' one"
                             " case, '4/kdf_test' one vector file; any other PATTERN is a"
                             " case-insensitive substring of the id or title ('aead')."
                             "  Selecting no case is an error (exit status 2)")
    parser.add_argument("--list", action="store_true", help="list the cases without running")
    parser.add_argument("--json", metavar="FILE", type=Path,
                        help="write a JSON report (its directory must exist; checked before"
                             " any case runs)")
    parser.add_argument("--junit", metavar="FILE", type=Path,
                        help="write a JUnit XML report (its directory must exist; checked"
                             " before any case runs)")
    parser.set_defaults(func=run)


def build_target(args: argparse.Namespace) -> Target:
    """The target named by the command-line options."""
    from securefl.conformance.adapters import load_factory
    from securefl.conformance.cases import Target

    target = Target()
    described = []
    if args.client:
        target = Target(load_factory(args.client), target.server,  # type: ignore[arg-type]
                        target.primitives)
        described.append(f"client={args.client}")
    if args.server:
        target = Target(target.client, load_factory(args.server),  # type: ignore[arg-type]
                        target.primitives)
        described.append(f"server={args.server}")
    if args.primitives:
        prims = None if args.primitives == "none" else load_factory(args.primitives)
        target = Target(target.client, target.server, prims)  # type: ignore[arg-type]
        described.append(f"primitives={args.primitives}")
    description = ", ".join(described) if described else "securefl (built-in)"
    return Target(target.client, target.server, target.primitives, description)


def check_report_path(path: Path, option: str) -> None:
    """Refuse, before any case runs, a report path that cannot be written.

    Raises:
        ConfigurationError: the directory of ``path`` does not exist or is not
            writable, or ``path`` is a directory.
    """
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ConfigurationError(f"{option} {path}: is a directory, expected a file name")
    if not parent.is_dir():
        raise ConfigurationError(f"{option} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigurationError(f"{option} {path}: directory {parent} is not writable")


def run(args: argparse.Namespace) -> int:
    """Run (or list) the selected cases; 0 if none failed, 1 otherwise.

    Raises:
        ConfigurationError: no case is selected, or a report file cannot be
            written (checked before any case runs).
    """
    # imported here so that the rest of the CLI works without the wire codec's
    # protobuf runtime installed
    from securefl.conformance.jsonio import DEFAULT_VECTOR_DIR
    from securefl.conformance.runner import all_cases, select, summarize, write_json, write_junit
    from securefl.conformance.runner import run as run_cases

    cases = select(all_cases(args.vectors or DEFAULT_VECTOR_DIR, vectors=args.only != "scenarios",
                             scenarios=args.only != "vectors"), args.patterns)
    if not cases:
        chosen = " ".join(f"-k {p!r}" for p in args.patterns) or "these options"
        raise ConfigurationError(f"{chosen} selects no conformance case;"
                                 " 'securefl conformance --list' shows the ids")
    if args.list:
        for case in cases:
            print(f"{case.id} [{case.kind}] {case.title}")
        print(f"{len(cases)} cases")
        return 0
    for path, option in ((args.json, "--json"), (args.junit, "--junit")):
        if path is not None:
            check_report_path(path, option)
    target = build_target(args)
    print(f"secagg v1 conformance against {target.description}")
    results = run_cases(cases, target)
    if args.json:
        write_json(args.json, results, target)
    if args.junit:
        write_junit(args.junit, results, target)
    return 1 if summarize(results).failed else 0
