"""A decoded key roster held as columns, for O(k) work per sparse-graph client.

The wire codec decodes a plain roster (no signatures, no noise commitments:
every entry is a sender and three 32-byte fields) into :class:`RosterEntries`:
a read-only sequence of :class:`~securefl.protocol.messages.AdvertiseKeys`
that builds an entry only when it is looked at, and exposes the senders and
the key bytes as numpy columns.  A client checks the whole roster with array
operations and one hash (:func:`session_id_of`) and then materialises only
its neighbours' entries.  It compares equal to the tuple of its entries.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np

from securefl.protocol import derivation as d
from securefl.protocol.messages import AdvertiseKeys


class IdTuple(tuple[int, ...]):
    """A tuple of client ids that also carries them as an ``int64`` numpy
    array (:attr:`array`), so that a party checks a long id list (survivors,
    dropped) with array operations instead of a Python step per id.  It is
    equal to, hashes like and prints like the plain tuple; the array is read
    only and always holds exactly the tuple's ids, in the same order."""

    array: np.ndarray

    def __new__(cls, ids: Sequence[int] | np.ndarray) -> IdTuple:
        array = np.array(ids, dtype=np.int64).reshape(-1)
        array.setflags(write=False)
        # Python ints straight from the array's buffer: no intermediate list
        # (8 bytes an id less at the peak of a decode, and faster)
        self = super().__new__(cls, memoryview(np.ascontiguousarray(array)))
        self.array = array
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (IdTuple, (tuple(self),))


class RosterEntries(Sequence[AdvertiseKeys]):
    """Roster entries as columns: ``senders`` (ascending ``uint32``) and
    ``fields`` (``n x 96`` bytes: encryption key, masking key, seed
    commitment).  Entries have no signature and no noise commitments."""

    __slots__ = ("_ids", "fields", "rows", "senders")

    def __init__(self, senders: np.ndarray, fields: np.ndarray,
                 rows: np.ndarray | None = None) -> None:
        if senders.ndim != 1 or fields.shape != (senders.shape[0], 96):
            raise ValueError("roster columns must be n senders and n x 96 bytes")
        if rows is not None and rows.shape != (senders.shape[0], 100):
            raise ValueError("roster rows must be n x 100 bytes")
        self.senders = senders
        self.fields = fields
        # optionally, every entry as the session id hashes it: the sender
        # (big-endian uint32) then the 96 bytes of fields (C-contiguous)
        self.rows = rows
        self._ids: list[int] | None = None

    @property
    def ids(self) -> list[int]:
        """The senders as Python ints, in roster order."""
        if self._ids is None:
            self._ids = self.senders.tolist()
        return self._ids

    def __len__(self) -> int:
        return int(self.senders.shape[0])

    def _entry(self, i: int) -> AdvertiseKeys:
        row = self.fields[i].tobytes()
        return AdvertiseKeys(int(self.senders[i]), row[:32], row[32:64], None, row[64:96], ())

    @overload
    def __getitem__(self, index: int) -> AdvertiseKeys: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[AdvertiseKeys, ...]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return tuple(self._entry(i) for i in range(*index.indices(len(self))))
        n = len(self)
        if not -n <= index < n:
            raise IndexError("roster index out of range")
        return self._entry(index % n)

    def __iter__(self) -> Iterator[AdvertiseKeys]:
        return (self._entry(i) for i in range(len(self)))

    def find(self, sender: int) -> AdvertiseKeys | None:
        """The entry of ``sender`` (binary search), or None."""
        i = int(np.searchsorted(self.senders, sender))
        if i < len(self) and int(self.senders[i]) == sender:
            return self._entry(i)
        return None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RosterEntries):
            return bool(np.array_equal(self.senders, other.senders)
                        and np.array_equal(self.fields, other.fields))
        if isinstance(other, tuple | list):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other,
                                                                           strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"RosterEntries({len(self)} entries)"


def _rows_hold(entries: RosterEntries, rows: np.ndarray) -> bool:
    """Are ``rows`` exactly the entries as the session id hashes them?  The
    fields must be the very memory of ``rows[:, 4:]`` (as the decoder lays
    them out: O(1) to check) and the senders equal to its first 4 bytes
    (O(n)); otherwise a hash of ``rows`` would not be the hash of the keys
    the party uses."""
    fields = entries.fields
    if rows.dtype != np.uint8 or not rows.flags.c_contiguous or fields.base is not rows \
            or fields.dtype != np.uint8 or fields.shape != (rows.shape[0], 96) \
            or fields.strides != rows.strides \
            or fields.__array_interface__["data"][0] != rows.__array_interface__["data"][0] + 4:
        return False
    return bool(np.array_equal(rows[:, :4].view(">u4").reshape(-1), entries.senders))


def session_id_of(config_digest: bytes, entries: RosterEntries) -> bytes:
    """:func:`~securefl.protocol.derivation.session_id` of ``entries`` with
    one hash update over the columns (entries are sorted by sender)."""
    n = len(entries)
    rows = entries.rows
    if rows is None or not _rows_hold(entries, rows):
        rows = np.empty((n, 100), dtype=np.uint8)
        rows[:, :4] = entries.senders.astype(">u4").view(np.uint8).reshape(n, 4)
        rows[:, 4:] = entries.fields
    h = hashlib.sha256(d.PREFIX + b"session-id")
    h.update(config_digest)
    h.update(struct.pack(">I", n))
    h.update(memoryview(rows).cast("B"))  # hashed in place, no copy
    return h.digest()
