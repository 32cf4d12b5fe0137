"""Checks on input and masked vectors shared by both ends."""

from __future__ import annotations

from typing import Any

import numpy as np

from securefl.errors import LocalProtocolError, RemoteProtocolError, Rule
from securefl.protocol.config import Round, SecAggConfig


def check_input_vector(vector: Any, config: SecAggConfig, peer: int, *, local: bool,
                       rnd: Round = Round.MASKED_INPUT_COLLECTION) -> np.ndarray:
    """Return ``vector`` as a ``uint64`` array after checking that it is 1-D,
    of length ``vector_length``, of an integer dtype, and inside [0, 2^bits).

    Raises:
        LocalProtocolError (``local=True``) or RemoteProtocolError: with rule
            ``WRONG_LENGTH``, ``MALFORMED`` or ``VALUE_OUT_OF_RANGE``.
    """
    error = LocalProtocolError if local else RemoteProtocolError
    if not isinstance(vector, np.ndarray):
        raise error(Rule.MALFORMED, f"vector must be a numpy array, got {type(vector).__name__}",
                    peer=peer, round=rnd)
    if vector.ndim != 1 or vector.shape[0] != config.vector_length:
        raise error(Rule.WRONG_LENGTH,
                    f"vector has shape {vector.shape}, expected ({config.vector_length},)",
                    peer=peer, round=rnd)
    if vector.dtype.kind not in "ui":
        raise error(Rule.MALFORMED, f"vector dtype must be an integer type, got {vector.dtype}",
                    peer=peer, round=rnd)
    if vector.dtype.kind == "i" and vector.size and int(vector.min()) < 0:
        raise error(Rule.VALUE_OUT_OF_RANGE, "negative entry", peer=peer, round=rnd)
    if config.bits < 64 and vector.size and int(vector.max()) >= (1 << config.bits):
        raise error(Rule.VALUE_OUT_OF_RANGE, f"entry not below 2^{config.bits}",
                    peer=peer, round=rnd)
    return vector.astype(np.uint64)
