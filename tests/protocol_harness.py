"""Drive real sessions round by round so tests can intercept any message."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from securefl.hazmat import signing
from securefl.hazmat.randomness import SystemRandom
from securefl.protocol import ClientSession, Round, SecAggConfig, SecurityMode, ServerSession
from securefl.protocol.messages import ClientMessage, ServerMessage


@dataclass
class Federation:
    """A server and its clients, stepped one round at a time."""

    config: SecAggConfig
    inputs: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = SystemRandom()
        cfg = self.config
        if not self.inputs:
            gen = np.random.default_rng(0)
            high = 2**cfg.bits if cfg.bits < 64 else 2**63
            self.inputs = {c: gen.integers(0, high, cfg.vector_length, dtype=np.uint64)
                           for c in cfg.ids}
        self.identities = {}
        self.pinned = None
        if cfg.mode is SecurityMode.ACTIVE:
            self.identities = {c: signing.generate_identity(rng) for c in cfg.ids}
            self.pinned = {c: k.public_key() for c, k in self.identities.items()}
        self.server = ServerSession(cfg, peer_identities=self.pinned)
        self.clients = {
            c: ClientSession(cfg, c, input=self.inputs[c], identity_key=self.identities.get(c),
                             peer_identities=self.pinned)
            for c in cfg.ids
        }
        self.pending: dict[int, ServerMessage] = {}
        self.sent: dict[Round, dict[int, ClientMessage]] = {}
        self.round = Round.ADVERTISE_KEYS

    def advertise(self, skip: set[int] = frozenset()) -> dict[int, ServerMessage]:  # type: ignore[assignment]
        adverts = {c: cl.start() for c, cl in self.clients.items()}
        self.sent[Round.ADVERTISE_KEYS] = adverts
        for c, msg in adverts.items():
            if c not in skip:
                self.server.receive(msg)
        return self.close()

    def close(self) -> dict[int, ServerMessage]:
        envelopes = self.server.close_round()
        self.pending = {e.recipient: e.message for e in envelopes}
        return self.pending

    def answer(self, skip: set[int] = frozenset(),  # type: ignore[assignment]
               replace: dict[int, ServerMessage] | None = None) -> dict[int, ClientMessage]:
        """Every pending recipient (not in ``skip``) handles its message and
        the replies go to the server; returns the replies."""
        replace = replace or {}
        replies = {}
        for c, msg in self.pending.items():
            if c in skip:
                continue
            replies[c] = self.clients[c].handle(replace.get(c, msg))
        for reply in replies.values():
            self.server.receive(reply)
        return replies

    def step(self, skip: set[int] = frozenset()) -> dict[int, ServerMessage]:  # type: ignore[assignment]
        self.answer(skip)
        return self.close()

    def expected_sum(self) -> np.ndarray:
        total = np.zeros(self.config.vector_length, dtype=np.uint64)
        for c in self.server.result.survivors:
            total += self.inputs[c]
        if self.config.bits < 64:
            total &= np.uint64((1 << self.config.bits) - 1)
        return total
