"""Optional dependencies: which extra brings which module, and a clear error
when one is missing.

``pip install securefl`` installs the secure aggregation core only (numpy,
cryptography, protobuf): :mod:`securefl.protocol`, :mod:`securefl.hazmat`,
:mod:`securefl.wire`, :mod:`securefl.encoding` and :mod:`securefl.conformance`
never import anything else.  Federated training (:mod:`securefl.privacy`'s
Opacus clients and accountants, :mod:`securefl.federation`) needs the
``train`` extra; the Flower integration the ``flower`` extra; Flower's
baseline in ``securefl bench`` the ``bench`` extra.

:func:`install` (called once by ``import securefl``) puts a finder on
:data:`sys.meta_path` that loads the modules of those optional packages
exactly as the standard path finder does, except that a
:class:`ModuleNotFoundError` for an optional dependency raised while a module
executes becomes a :class:`~securefl.errors.MissingExtraError` naming the
extra to install.  Modules of the core are not touched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from securefl.errors import MissingExtraError

DEPENDENCY_EXTRA: dict[str, str] = {
    "torch": "train",
    "opacus": "train",
    "sklearn": "train",
    "matplotlib": "train",
    "tqdm": "train",
    "dp_accounting": "train",
    "flwr": "flower",
}
"""Top-level module of an optional dependency -> the securefl extra that
installs it."""

GUARDED_PACKAGES: tuple[str, ...] = (
    "securefl.privacy.",
    "securefl.federation.",
    "securefl.flower.",
    "securefl.bench.",
)
"""Prefixes of the modules whose imports may need an extra."""


def extra_for(module: str, dependency: str) -> str | None:
    """The extra that provides ``dependency`` to securefl module ``module``
    (None if ``dependency`` is not an optional dependency of securefl)."""
    extra = DEPENDENCY_EXTRA.get(dependency.partition(".")[0])
    if extra == "flower" and module.startswith("securefl.bench"):
        return "bench"
    return extra


def missing_extra(module: str, exc: ModuleNotFoundError) -> MissingExtraError | None:
    """The :class:`MissingExtraError` that explains ``exc`` (raised while
    importing ``module``), or None if ``exc`` is not about an optional
    dependency."""
    if isinstance(exc, MissingExtraError):
        return exc
    dependency = (exc.name or "").partition(".")[0]
    extra = extra_for(module, dependency)
    if extra is None:
        return None
    return MissingExtraError(
        f"{module} needs {dependency}, which is not installed; it comes with securefl's"
        f" '{extra}' extra: pip install 'securefl[{extra}]'",
        name=dependency,
    )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package, or a finder that refuses it
        return False


def require(dependencies: Sequence[str], user: str) -> None:
    """Refuse up front, before any work, when ``user`` (a module or a command
    such as ``"securefl bench"``) needs optional dependencies that are not
    installed.

    Raises:
        MissingExtraError: some of ``dependencies`` cannot be imported; the
            message names every missing one and the extras that install them
            (``name`` is the first missing one).
    """
    missing = [d for d in dependencies if not _installed(d)]
    if not missing:
        return
    extras = sorted({extra_for(user.replace(" ", "."), d) or "train" for d in missing})
    raise MissingExtraError(
        f"{user} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not"
        f" installed; {'it comes' if len(missing) == 1 else 'they come'} with securefl's"
        f" {' and '.join(repr(e) for e in extras)} extra{'s' if len(extras) > 1 else ''}:"
        f" pip install 'securefl[{','.join(extras)}]'",
        name=missing[0],
    )


class _ExplainingLoader(importlib.abc.Loader):
    """Delegates to the standard loader; turns a missing optional dependency
    into a :class:`MissingExtraError`."""

    def __init__(self, inner: importlib.abc.Loader, fullname: str) -> None:
        self._inner = inner
        self._fullname = fullname

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            self._inner.exec_module(module)
        except ModuleNotFoundError as exc:
            explained = missing_extra(self._fullname, exc)
            if explained is None or explained is exc:
                raise
            raise explained from exc

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ...
        return getattr(self._inner, name)


class _ExtrasFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`GUARDED_PACKAGES` as the path finder does,
    with an explaining loader."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(GUARDED_PACKAGES):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or isinstance(spec.loader, _ExplainingLoader):
            return spec
        spec.loader = _ExplainingLoader(spec.loader, fullname)
        return spec


def install() -> None:
    """Put the explaining finder first on :data:`sys.meta_path` (once)."""
    if not any(isinstance(finder, _ExtrasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ExtrasFinder())
