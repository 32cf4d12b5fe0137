"""The federation server: the global model, aggregation (secure or plain)
and the server optimizer.

A round is a transaction.  :meth:`Server.aggregate` computes the average
update without touching any state; :meth:`Server.apply` then changes the
global model and the optimizer state.  A round that aborts raises from
``aggregate`` and so leaves the server exactly as it was.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from securefl.encoding import DecodedSum, EncodedUpdate, FixedPointCodec, PlainUpdate
from securefl.errors import AbortError, ConfigurationError
from securefl.federation.optimizers import ServerOptimizer, ServerOptimizerConfig
from securefl.protocol import Round, SecAggConfig, default_threshold, secure_sum
from securefl.protocol.config import ROSTER_DELIVERIES, SecurityMode, session_roster_delivery
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph

__all__ = ["AggregateOutcome", "AggregationMode", "Server", "plain_survivors"]


class AggregationMode(str, enum.Enum):
    """How the server learns the sum of the clients' updates."""

    SECURE = "secure"
    """Bonawitz secure aggregation (``securefl.secure_sum``): the server
    learns only the sum of the encoded updates."""
    PLAIN = "plain"
    """Plain float summation (no encoding, no masks), for comparison."""


@dataclass(frozen=True)
class AggregateOutcome:
    """The result of aggregating one round.

    Attributes:
        average: the weighted average update, one float64 array per tensor.
        survivors: ids of the clients whose update entered the sum.
        weight_total: the total weight of those updates.
    """

    average: list[np.ndarray]
    survivors: tuple[int, ...]
    weight_total: int


def plain_survivors(ids: tuple[int, ...], dropouts: Mapping[int, Round],
                    threshold: int) -> tuple[int, ...]:
    """The dropout semantics of secure aggregation, without cryptography.

    A client answers every protocol round before the one it drops at.  The
    round aborts when fewer than ``threshold`` clients answer some round;
    otherwise the survivors are the clients that answered
    ``MASKED_INPUT_COLLECTION`` (they are in the sum even if they drop later).

    Raises:
        AbortError: naming the round and the numbers.
    """
    for rnd in Round:
        alive = [cid for cid in ids if dropouts.get(cid) is None or rnd < dropouts[cid]]
        if len(alive) < threshold:
            raise AbortError(f"{len(alive)} clients answered, {threshold} needed",
                             round=rnd, needed=threshold, available=len(alive))
    return tuple(cid for cid in ids if dropouts.get(cid) is None
                 or dropouts[cid] > Round.MASKED_INPUT_COLLECTION)


class Server:
    """Holds the global model and applies aggregated updates to it.

    Args:
        model: the global model (the server owns it and changes it in place).
        codec: the fixed-point codec shared with the clients.
        optimizer: server optimizer configuration.
        client_ids: every client of the federation (invited to every round).
        mode: secure or plain aggregation.
        threshold: minimum clients per protocol round (default: the
            security mode's, :func:`~securefl.protocol.default_threshold`:
            ``floor(n/2) + 1`` semi-honest, ``floor(2n/3) + 1`` active).
        name: federation name bound into every secure aggregation session.
        security_mode: the secure aggregation mode the sessions run in
            (semi-honest or active, in the simulator and the Flower ServerApp).
        graph: who masks with whom in the in-process secure sessions
            (default the complete graph; ``HararyGraph(k)`` for SecAgg+).
        roster_delivery: ``"full"`` (default) or ``"merkle"`` (a sparse
            ``graph`` only): each session uses ``"merkle"`` when its graph
            is sparse for its roster, ``"full"`` otherwise
            (:meth:`roster_delivery_for`).

    Raises:
        ConfigurationError: on a threshold out of 1..n, fewer than two
            clients, a codec that does not match the model, or (secure mode)
            a threshold, graph and security mode that no session accepts
            (the :class:`~securefl.protocol.SecAggConfig` rules, checked here
            before any round); ``roster_delivery`` other than ``"full"`` and
            ``"merkle"``, or ``"merkle"`` with a graph that is not sparse for
            the federation (the complete graph).
    """

    def __init__(self, model: nn.Module, codec: FixedPointCodec,
                 optimizer: ServerOptimizerConfig, client_ids: tuple[int, ...], *,
                 mode: AggregationMode = AggregationMode.SECURE,
                 threshold: int | None = None, name: str = "securefl",
                 security_mode: SecurityMode = SecurityMode.SEMI_HONEST,
                 graph: NeighbourGraph | None = None,
                 roster_delivery: str = "full") -> None:
        self.model = model
        self.codec = codec
        self.optimizer = ServerOptimizer(optimizer)
        self.client_ids = tuple(int(c) for c in client_ids)
        self.mode = AggregationMode(mode)
        self.name = name
        n = len(self.client_ids)
        if n < 2:
            raise ConfigurationError(f"a federation needs at least 2 clients, got {n}")
        self.security_mode = SecurityMode(security_mode)
        self.threshold = default_threshold(n, self.security_mode) if threshold is None \
            else int(threshold)
        if not 1 <= self.threshold <= n:
            raise ConfigurationError(f"threshold must be in 1..{n}, got {self.threshold}")
        self.graph: NeighbourGraph = CompleteGraph() if graph is None else graph
        if roster_delivery not in ROSTER_DELIVERIES:
            raise ConfigurationError(f"roster_delivery must be one of"
                                     f" {', '.join(ROSTER_DELIVERIES)}, got {roster_delivery!r}")
        self.roster_delivery = roster_delivery
        self.last_session: SecAggConfig | None = None
        """The configuration of the last secure session this server's rounds
        built (None before any): the driver reads its roster delivery."""
        if self.mode is AggregationMode.SECURE:
            if roster_delivery == "merkle" and self.roster_delivery_for(n) != "merkle":
                raise ConfigurationError(
                    f"roster_delivery merkle needs a sparse graph; {self.graph.describe()!r}"
                    f" gives every one of the {n} clients every roster entry: use a Harary"
                    " graph of degree k < n - 1, or roster_delivery full")
            self._secagg_config(0)  # refuse what no session accepts before any round
        shapes = tuple(tuple(p.shape) for p in self.model.parameters())
        if shapes != codec.shapes:
            raise ConfigurationError(f"codec shapes {codec.shapes} != model shapes {shapes}")
        if codec.num_clients < n:
            raise ConfigurationError(
                f"the codec's bit budget covers {codec.num_clients} clients, the federation has {n}"
            )

    def global_parameters(self) -> list[torch.Tensor]:
        """Copies of the global parameters, in ``model.parameters()`` order."""
        return [p.detach().clone() for p in self.model.parameters()]

    def aggregate(self, round_number: int,
                  updates: Mapping[int, EncodedUpdate | PlainUpdate | None],
                  dropouts: Mapping[int, Round]) -> AggregateOutcome:
        """Aggregate one round without changing any state.

        Args:
            round_number: the federation round (bound into the session context).
            updates: client id -> its encoded update (secure mode) or plain
                update (plain mode); None for a client that does not take part
                (it is treated as dropped before sending anything).
            dropouts: client id -> the first protocol round it does not answer.

        Raises:
            AbortError: fewer than ``threshold`` clients remained at some round.
            ConfigurationError: an update of the wrong kind for the mode, or an
                unknown client.
        """
        unknown = (set(updates) | set(dropouts)) - set(self.client_ids)
        if unknown:
            raise ConfigurationError(f"unknown client ids {sorted(unknown)}")
        drops = dict(dropouts)
        for cid in self.client_ids:
            if updates.get(cid) is None:
                drops[cid] = Round.ADVERTISE_KEYS
        if self.mode is AggregationMode.SECURE:
            total, survivors = self._secure(round_number, updates, drops)
            return self.outcome_from_sum(total, survivors)
        decoded, survivors = self._plain(updates, drops)
        return AggregateOutcome(average=decoded.average(), survivors=survivors,
                                weight_total=decoded.weight_total)

    def _secure(self, round_number: int,
                updates: Mapping[int, EncodedUpdate | PlainUpdate | None],
                drops: dict[int, Round]) -> tuple[np.ndarray, tuple[int, ...]]:
        zeros = np.zeros(self.codec.vector_length, dtype=np.uint64)
        inputs: dict[int, np.ndarray] = {}
        for cid in self.client_ids:
            update = updates.get(cid)
            if update is None:
                inputs[cid] = zeros  # never sent: the client drops before ADVERTISE_KEYS
            elif isinstance(update, EncodedUpdate):
                inputs[cid] = update.vector
            else:
                raise ConfigurationError("secure aggregation needs encoded updates")
        # active mode: secure_sum gives every client a fresh Ed25519 identity,
        # pinned at every party, for this session
        config = self._secagg_config(round_number)
        self.last_session = config
        result = secure_sum(inputs, config, drops)
        return result.total, tuple(sorted(result.survivors))

    def _secagg_config(self, round_number: int) -> SecAggConfig:
        """The session configuration of one federation round."""
        return SecAggConfig(
            num_clients=len(self.client_ids), vector_length=self.codec.vector_length,
            bits=self.codec.bits, threshold=self.threshold, client_ids=self.client_ids,
            context=f"{self.name} round {round_number}".encode(), mode=self.security_mode,
            graph=self.graph, roster_delivery=self.roster_delivery_for(len(self.client_ids)),
        )

    def roster_delivery_for(self, num_clients: int) -> str:
        """The roster delivery of a session over ``num_clients`` clients:
        ``"merkle"`` when this server's ``roster_delivery`` is ``"merkle"``
        and its graph is sparse for that roster, ``"full"`` otherwise
        (:func:`~securefl.protocol.config.session_roster_delivery`)."""
        return session_roster_delivery(self.roster_delivery, self.graph, num_clients)

    def outcome_from_sum(self, total: np.ndarray,
                         survivors: tuple[int, ...]) -> AggregateOutcome:
        """The outcome of a secure aggregation run elsewhere (over a network:
        the Flower ServerApp): decode ``total``, the exact sum mod 2^bits of
        the survivors' encoded updates, without changing any state.  The one
        decoding path of secure mode (:meth:`aggregate` uses it too).

        Raises:
            EncodingError: when ``total`` does not decode (wrong length, a
                weight total out of range).
            ConfigurationError: in plain mode, or for unknown survivors.
        """
        if self.mode is not AggregationMode.SECURE:
            raise ConfigurationError("a sum from secure aggregation needs secure mode")
        unknown = set(survivors) - set(self.client_ids)
        if unknown:
            raise ConfigurationError(f"unknown client ids {sorted(unknown)}")
        decoded = self.codec.decode_sum(total)
        return AggregateOutcome(average=decoded.average(), survivors=tuple(sorted(survivors)),
                                weight_total=decoded.weight_total)

    def _plain(self, updates: Mapping[int, EncodedUpdate | PlainUpdate | None],
               drops: dict[int, Round]) -> tuple[DecodedSum, tuple[int, ...]]:
        survivors = plain_survivors(self.client_ids, drops, self.threshold)
        plain = []
        for cid in survivors:
            update = updates[cid]
            if not isinstance(update, PlainUpdate):
                raise ConfigurationError("plain aggregation needs plain updates")
            plain.append(update)
        return self.codec.decode_plain_sum(plain), survivors

    def apply(self, outcome: AggregateOutcome) -> None:
        """Apply the server optimizer's step for ``outcome`` to the global
        model and commit the optimizer state."""
        step, state = self.optimizer.step(outcome.average)
        with torch.no_grad():
            for param, delta in zip(self.model.parameters(), step, strict=True):
                param.add_(torch.as_tensor(delta, dtype=param.dtype))
        self.optimizer.commit(state)
