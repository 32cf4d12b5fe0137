"""The client's bulk roster check (set and array operations instead of one
Python loop per entry) must never pass a roster the per-entry rules
[R0-5]/[R0-7] refuse."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.hazmat.agreement import FIELD_PRIME, is_canonical_encoding
from securefl.protocol.client import _roster_clean
from securefl.protocol.messages import AdvertiseKeys

_near_p = st.integers(FIELD_PRIME - 40, 2**256 - 1).map(lambda u: u.to_bytes(32, "little"))
_key = st.one_of(st.binary(min_size=31, max_size=33), _near_p,
                 st.integers(0, 2**255 - 1).map(lambda u: u.to_bytes(32, "little")))


def _per_entry_ok(entries: list[AdvertiseKeys], invited: frozenset[int]) -> bool:
    keys = [k for e in entries for k in (e.encryption_key, e.masking_key)]
    return (all(e.sender in invited for e in entries)
            and all(is_canonical_encoding(k) for k in keys)
            and all(len(e.seed_commitment) == 32 and e.noise_commitments == () for e in entries)
            and len(set(keys)) == len(keys))


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(_key, min_size=2, max_size=12), senders=st.integers(1, 8),
       commitment=st.binary(min_size=31, max_size=33), invited_max=st.integers(3, 8))
def test_bulk_check_agrees_with_the_per_entry_rules(keys: list[bytes], senders: int,
                                                    commitment: bytes,
                                                    invited_max: int) -> None:
    pairs = list(zip(keys[0::2], keys[1::2], strict=False))[:senders]
    entries = [AdvertiseKeys(i + 1, enc, mask, None, commitment)
               for i, (enc, mask) in enumerate(pairs)]
    invited = frozenset(range(1, invited_max + 1))
    ids = [e.sender for e in entries]
    assert _roster_clean(tuple(entries), ids, invited, 0) == _per_entry_ok(entries, invited)
