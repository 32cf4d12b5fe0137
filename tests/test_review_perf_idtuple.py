"""Adversarial review of the client's id lists as arrays (``IdTuple``,
``ClientSession._id_array``), active mode, real sessions.

The client checked a survivor list through its ``.array`` attribute (any
object's) and revealed shares by that array, while it signed, and compared
with what it signed, the list's tuple items.  A malicious server handing the
client a list whose items are the signed survivor list ``L`` but whose
``.array`` leaves out survivor 2, with 2 in the dropped list, got from
client 1 the share of 2's masking KEY although 2 is a survivor in the list
everyone signed, whose other holders reveal 2's self-mask SEED shares: with
both, 2's input is unmasked (the split-list attack that the signature quorum,
SPEC [PARAM-7], exists to stop).  Only possible for a server that hands the
client Python objects (the wire decoder builds consistent ``IdTuple``s), but
the client must read one list, not two.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from securefl import Round, SecAggConfig, SecurityMode
from securefl.errors import ProtocolError
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import UnmaskingRequest
from securefl.protocol.roster import IdTuple

CONFIG = SecAggConfig(num_clients=6, vector_length=4, bits=16, threshold=4,
                      mode=SecurityMode.ACTIVE)


class _TwoFaced(tuple):  # type: ignore[type-arg]
    """A tuple whose items are one list and whose ``array`` is another."""

    array: np.ndarray


def _two_faced(items: tuple[int, ...], shown: list[int]) -> Any:
    out = _TwoFaced(items)
    out.array = np.array(shown, dtype=np.int64)
    return out


def _rebound(items: tuple[int, ...], shown: list[int]) -> Any:
    out = IdTuple(items)
    out.array = np.array(shown, dtype=np.int64)
    return out


@pytest.mark.parametrize("make", [_two_faced, _rebound], ids=["duck-typed", "rebound-idtuple"])
def test_a_list_with_two_faces_is_not_read_two_ways(make: Any) -> None:
    driver = SessionDriver(CONFIG, {c: np.zeros(4, dtype=np.uint64) for c in CONFIG.ids})
    driver.start()
    driver.close()
    driver.step()
    driver.step()
    driver.step()  # consistency signatures collected: unmasking requests pending
    request = driver.pending[1]
    assert isinstance(request, UnmaskingRequest) and 2 in request.survivors
    signed = tuple(request.survivors)
    evil = dataclasses.replace(
        request, survivors=make(signed, [u for u in signed if u != 2]),
        dropped=tuple(sorted({*request.dropped, 2})))
    client = driver.clients[1]
    try:
        response = client.handle(evil)
    except ProtocolError as exc:
        assert exc.peer == "server" and exc.round is Round.UNMASKING
        return
    # answered: then it must not reveal survivor 2's key share
    assert 2 not in response.key_shares, "revealed a signed survivor's masking-key share"
