"""Checks on input and masked vectors shared by both ends."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from securefl.errors import LocalProtocolError, RemoteProtocolError, Rule
from securefl.protocol.config import Round, SecAggConfig


def check_input_vector(vector: Any, config: SecAggConfig, peer: int, *, local: bool,
                       rnd: Round = Round.MASKED_INPUT_COLLECTION,
                       dtype: np.dtype | None = None) -> np.ndarray:
    """Return ``vector`` as a new ``uint64`` array (or a new array of
    ``dtype``, which must hold 2^bits - 1: the values are unchanged) after
    checking it with :func:`validate_input_vector`.

    Raises:
        LocalProtocolError (``local=True``) or RemoteProtocolError: with rule
            ``WRONG_LENGTH``, ``MALFORMED`` or ``VALUE_OUT_OF_RANGE``.
    """
    checked = validate_input_vector(vector, config, peer, local=local, rnd=rnd)
    return checked.astype(np.uint64 if dtype is None else dtype)


def validate_input_vector(vector: Any, config: SecAggConfig, peer: int, *, local: bool,
                          rnd: Round = Round.MASKED_INPUT_COLLECTION) -> np.ndarray:
    """Check that ``vector`` is a 1-D numpy array of length ``vector_length``,
    of an integer dtype, with every entry inside [0, 2^bits); return it
    without a copy, nothing converted (a subclass of ``ndarray``, e.g.
    ``np.memmap``, as a plain ``ndarray`` view of the same memory: the entries
    checked are the ones read afterwards, whatever the subclass overrides):
    converting the result exactly into the ring's dtype is then safe.  A
    masked array (``np.ma.MaskedArray``) is refused: its masked entries have
    no value to aggregate, and its ``min``/``max`` skip them while a copy
    reads them (they would wrap silently into other ring elements).

    Raises:
        LocalProtocolError (``local=True``) or RemoteProtocolError: with rule
            ``WRONG_LENGTH``, ``MALFORMED`` or ``VALUE_OUT_OF_RANGE``.
    """
    error = LocalProtocolError if local else RemoteProtocolError
    if not isinstance(vector, np.ndarray):
        raise error(Rule.MALFORMED, f"vector must be a numpy array, got {type(vector).__name__}",
                    peer=peer, round=rnd)
    if isinstance(vector, np.ma.MaskedArray):
        raise error(Rule.MALFORMED, "vector must be a plain numpy array, not a masked array",
                    peer=peer, round=rnd)
    if type(vector) is not np.ndarray:
        vector = np.ndarray.view(vector, np.ndarray)
    if vector.ndim != 1 or vector.shape[0] != config.vector_length:
        raise error(Rule.WRONG_LENGTH,
                    f"vector has shape {vector.shape}, expected ({config.vector_length},)",
                    peer=peer, round=rnd)
    if vector.dtype.kind not in "ui":
        raise error(Rule.MALFORMED, f"vector dtype must be an integer type, got {vector.dtype}",
                    peer=peer, round=rnd)
    if vector.dtype.kind == "i" and vector.size and int(vector.min()) < 0:
        raise error(Rule.VALUE_OUT_OF_RANGE, "negative entry", peer=peer, round=rnd)
    # (a dtype whose every value is below 2^bits needs no pass over the entries)
    if config.bits < 64 and vector.size and int(np.iinfo(vector.dtype).max) >= (
            1 << config.bits) and int(vector.max()) >= (1 << config.bits):
        raise error(Rule.VALUE_OUT_OF_RANGE, f"entry not below 2^{config.bits}",
                    peer=peer, round=rnd)
    return vector


_NUMPY_INTS = frozenset(np.dtype(code).type for code in np.typecodes["AllInteger"])
"""The numpy integer scalar types (exactly these classes; never ``np.bool_``)."""


def is_client_id(value: Any) -> bool:
    """Exactly an ``int`` or a numpy integer scalar: never a bool, and never a
    subclass, whose own ``__hash__`` or ``__eq__`` would run (and could raise,
    or lie) when a session looks the id up in its own sets and maps."""
    return type(value) is int or type(value) in _NUMPY_INTS


_is_id = is_client_id


def _ids_ok(values: Any) -> bool:
    """Every element an id (plain ints checked in bulk, at C speed)."""
    return set(map(type, values)) <= {int} or all(_is_id(x) for x in values)


def _id_map_ok(mapping: Mapping[Any, Any]) -> bool:
    """Ids to ``bytes`` (the common all-plain case checked in bulk)."""
    if set(map(type, mapping.keys())) <= {int} and set(map(type, mapping.values())) <= {bytes}:
        return True
    return all(_is_id(k) and type(x) is bytes for k, x in mapping.items())


def _is_mapping(value: Any) -> bool:
    """``isinstance(value, Mapping)``, the ABC check skipped for the two
    mapping types decoded messages carry."""
    return type(value) in (dict, MappingProxyType) or isinstance(value, Mapping)


_FIELD_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": _is_id,
    "bytes": lambda v: type(v) is bytes,
    "bytes | None": lambda v: v is None or type(v) is bytes,
    "tuple[int, ...]": lambda v: isinstance(v, tuple) and _ids_ok(v),
    "Mapping[int, bytes]": lambda v: _is_mapping(v) and _id_map_ok(v),
    # noise plans (SPEC [NZ-2], [NZ-5])
    "tuple[bytes, ...]": lambda v: isinstance(v, tuple) and all(type(x) is bytes for x in v),
    "tuple[tuple[int, int], ...]": lambda v: isinstance(v, tuple) and all(
        _is_pair(x) for x in v),
    "Mapping[tuple[int, int], bytes]": lambda v: _is_mapping(v) and all(
        _is_pair(k) and type(x) is bytes for k, x in v.items()),
}


def _is_pair(value: Any) -> bool:
    """An ``(id, component)`` pair of ints (never bools)."""
    return (isinstance(value, tuple) and len(value) == 2 and _is_id(value[0])
            and _is_id(value[1]))


def check_message_fields(message: Any, rnd: Round) -> None:
    """Check that every field of a decoded message has its declared type:
    ids are exactly ints or numpy integers (never bools, never int
    subclasses: :func:`is_client_id`), byte fields are ``bytes``, id maps are
    mappings from ints to ``bytes``, id lists are tuples of ints.  A decoder
    other than the wire codec (or none) may hand a session anything; this is
    what the session can rely on afterwards.  Fields whose declared type is
    not listed here (e.g. the masked vector) are checked by their handler.

    Raises:
        RemoteProtocolError: rule ``MALFORMED``, naming the field.
    """
    sender = getattr(message, "sender", None)
    peer = operator.index(sender) if _is_id(sender) else None
    for name, declared, check in _checks_of(message):
        try:
            ok = check(getattr(message, name, None))
        except Exception:  # a hostile object whose iteration or comparison raises
            ok = False
        if not ok:
            raise RemoteProtocolError(Rule.MALFORMED, f"field {name} is not {declared}",
                                      peer=peer, round=rnd)


_CHECKS_OF_TYPE: dict[type, tuple[tuple[str, str, Callable[[Any], bool]], ...]] = {}
"""Per message class, its fields that have a check: (name, declared type, check)."""


def _checks_of(message: Any) -> tuple[tuple[str, str, Callable[[Any], bool]], ...]:
    """The checked fields of ``message``'s class (its dataclass fields, looked
    up once per class).

    Raises:
        TypeError: ``message`` is not a dataclass instance (as
            ``dataclasses.fields``).
    """
    kind = type(message)
    checks = _CHECKS_OF_TYPE.get(kind)
    if checks is None:
        # the class's fields, never the instance's: an instance carrying its own
        # ``__dataclass_fields__`` would otherwise choose which of its fields are
        # checked, and (cached per class) for every later message of the class
        checks = tuple((spec.name, spec.type, _FIELD_CHECKS[spec.type])
                       for spec in dataclasses.fields(kind)
                       if isinstance(spec.type, str) and spec.type in _FIELD_CHECKS)
        _CHECKS_OF_TYPE[kind] = checks
    return checks
