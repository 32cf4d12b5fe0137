"""``pip install securefl`` is the secure aggregation core: it must import and
run the conformance suite without torch, Opacus, scikit-learn, matplotlib,
tqdm or dp-accounting, and a training module imported without them must say
which extra to install.

Each test runs a fresh interpreter whose first meta-path finder makes those
imports fail, as they fail on a machine where they were never installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent

BLOCKER = textwrap.dedent("""
    import sys

    BLOCKED = {"torch", "opacus", "sklearn", "matplotlib", "tqdm", "dp_accounting", "flwr"}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
""")

CORE_PACKAGES = ["securefl.protocol", "securefl.hazmat", "securefl.wire", "securefl.conformance"]


def _python(body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(body)], cwd=ROOT,
                          text=True, capture_output=True, timeout=600, check=False)


def test_the_blocker_really_blocks() -> None:
    proc = _python("""
        try:
            import torch
        except ModuleNotFoundError as exc:
            print("blocked", exc.name)
    """)
    assert proc.stdout.strip() == "blocked torch", proc.stderr


def test_every_core_module_imports_without_training_dependencies() -> None:
    proc = _python(f"""
        import importlib, json, pkgutil
        import securefl, securefl.encoding, securefl.errors
        names = ["securefl", "securefl.encoding"]
        for package in {CORE_PACKAGES!r}:
            module = importlib.import_module(package)
            names.append(package)
            for info in pkgutil.walk_packages(module.__path__, package + "."):
                importlib.import_module(info.name)
                names.append(info.name)
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
        print(json.dumps({{"names": names, "loaded": loaded}}))
    """)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["loaded"] == []
    for package in CORE_PACKAGES:
        assert any(n.startswith(package + ".") for n in report["names"]), package
    assert "securefl.protocol.client" in report["names"]
    assert "securefl.wire.codec" in report["names"] or any(
        n.startswith("securefl.wire.") for n in report["names"])


def test_conformance_runs_without_training_dependencies() -> None:
    proc = _python("""
        from securefl.cli import main
        sys.exit(main(["conformance"]))
    """)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.endswith(" 0 failed") and not last.startswith("0 tests"), last


@pytest.mark.parametrize("module", ["securefl.privacy.client", "securefl.privacy.accounting",
                                    "securefl.federation.simulation",
                                    "securefl.federation.data"])
def test_a_training_module_says_which_extra_to_install(module: str) -> None:
    proc = _python(f"""
        from securefl.errors import MissingExtraError, SecureFLError
        try:
            import {module}
        except ImportError as exc:
            assert isinstance(exc, MissingExtraError), type(exc)
            assert isinstance(exc, SecureFLError) and isinstance(exc, ModuleNotFoundError)
            print(exc.name, "|", exc)
        else:
            print("imported")
    """)
    assert proc.returncode == 0, proc.stderr
    name, _, message = proc.stdout.strip().partition(" | ")
    assert name in {"torch", "opacus", "sklearn", "matplotlib", "tqdm", "dp_accounting"}
    assert f"{module} needs {name}" in message
    assert "pip install 'securefl[train]'" in message


def test_light_modules_of_training_packages_still_import() -> None:
    # the ledger and the option enums are read by `securefl audit` and the
    # simulator's argument parser; they have no training dependency
    proc = _python("""
        import securefl.privacy.ledger, securefl.privacy.options, securefl.federation.options
        print("ok")
    """)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_training_commands_say_which_extra_to_install(tmp_path: Path) -> None:
    argv = ["simulate", "--rounds", "1", "--output-dir", str(tmp_path / "run")]
    proc = _python(f"""
        from securefl.cli import main
        sys.exit(main({argv!r}))
    """)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("securefl: error: ")
    assert "pip install 'securefl[train]'" in proc.stderr


def test_the_cli_help_works_without_training_dependencies() -> None:
    proc = _python("""
        from securefl.cli import main
        sys.exit(main(["--help"]))
    """)
    assert proc.returncode == 0, proc.stderr
    assert "conformance" in proc.stdout and "simulate" in proc.stdout


@pytest.mark.parametrize(("extra_args", "extra"),
                         [([], "bench,train"), (["--no-flower"], "train")])
def test_bench_refuses_up_front_without_its_extra(tmp_path: Path, extra_args: list[str],
                                                  extra: str) -> None:
    argv = ["bench", "--clients", "4", "--length", "100", "--dropout", "0",
            "--out", str(tmp_path / "bench"), *extra_args]
    proc = _python(f"""
        from securefl.cli import main
        sys.exit(main({argv!r}))
    """)
    assert proc.returncode == 2, proc.stderr
    assert f"pip install 'securefl[{extra}]'" in proc.stderr
    assert "settings" not in proc.stdout          # nothing ran
    assert not (tmp_path / "bench").exists()


def test_guarded_modules_load_as_usual_when_the_extra_is_installed() -> None:
    # with the training extra present the explaining loader is transparent:
    # the module runs, and source and spec come from the standard loader
    import inspect

    import securefl.federation.options as options

    assert "class DatasetName" in inspect.getsource(options)
    assert options.__spec__ is not None and options.__spec__.origin == options.__file__
    assert options.__loader__.is_package(options.__name__) is False  # type: ignore[union-attr]


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_package_declares_the_core_and_the_train_extra_as_documented() -> None:
    # README.md: `pip install securefl` installs the secure aggregation core
    # (numpy, cryptography, protobuf); the `train` extra installs federated
    # training (torch, opacus, scikit-learn, matplotlib, tqdm, dp-accounting)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _requirement_names(project["dependencies"]) == {"numpy", "cryptography", "protobuf"}
    train = _requirement_names(project["optional-dependencies"]["train"])
    assert train == {"torch", "opacus", "scikit-learn", "matplotlib", "tqdm", "dp-accounting"}
    readme = (ROOT / "README.md").read_text()
    assert "`pip install securefl` installs only the secure aggregation core" in readme
    assert "pip install 'securefl[train]'" in readme


@pytest.mark.parametrize("mode", ["semi-honest", "active"])
def test_sum_demo_runs_without_training_dependencies(mode: str) -> None:
    # README.md lists `securefl sum-demo` among the core's commands
    proc = _python(f"""
        from securefl.cli import main
        sys.exit(main(["sum-demo", "--clients", "5", "--length", "100", "--mode", {mode!r}]))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("the two are identical in every entry"), proc.stdout


def _requirement_closure(names: list[str]) -> set[str]:
    """The distributions ``names`` need, their requirements without extras or
    unmet markers included, recursively (normalised names)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen: set[str] = set()
    todo = [norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(norm(req.name))
    return seen


def test_the_core_imports_only_the_core_distributions() -> None:
    """Every third-party module the core imports belongs to a core dependency
    (numpy, cryptography, protobuf) or one of their requirements: a core
    module importing anything else (scipy was one) fails on ``pip install
    securefl``."""
    proc = _python(f"""
        import importlib, json, pkgutil
        from importlib import metadata
        before = set(sys.modules)
        import securefl, securefl.encoding, securefl.errors, securefl.cli
        for package in {CORE_PACKAGES!r}:
            module = importlib.import_module(package)
            for info in pkgutil.walk_packages(module.__path__, package + "."):
                importlib.import_module(info.name)
        tops = {{m.partition(".")[0] for m in set(sys.modules) - before}}
        tops = {{t for t in tops if t not in sys.stdlib_module_names and not t.startswith("_")
                 and t != "securefl"}}
        dists = metadata.packages_distributions()
        print(json.dumps({{t: dists.get(t, []) for t in sorted(tops)}}))
    """)
    assert proc.returncode == 0, proc.stderr
    used = json.loads(proc.stdout)
    allowed = _requirement_closure(["numpy", "cryptography", "protobuf"])
    outside = {top: dists for top, dists in used.items()
               if not any(re.sub(r"[-_.]+", "-", d).lower() in allowed for d in dists)}
    assert outside == {}, f"the core imports modules of non-core distributions: {outside}"
