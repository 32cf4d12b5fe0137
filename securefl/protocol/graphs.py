"""Who masks with whom: the neighbour graph of a session.

The complete graph is Bonawitz et al. (2017): every pair of clients shares a
pairwise mask and every client deals Shamir shares to every other.  Sparse
graphs (SecAgg+, Bell et al. 2020) subclass :class:`NeighbourGraph`.

A graph is evaluated over the *roster* (the clients that advertised keys) and
the session id, which is public and fixed only once every key is advertised,
so a malicious server cannot choose a victim's neighbours.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Mapping, Sequence


class NeighbourGraph(abc.ABC):
    """An undirected graph over the roster, without self loops."""

    @abc.abstractmethod
    def neighbours(self, roster: Sequence[int], session_id: bytes) -> Mapping[int, frozenset[int]]:
        """Return, for every id in ``roster`` (sorted, distinct), the set of its
        neighbours (never itself).  Must be symmetric and deterministic in
        ``(roster, session_id)``."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A canonical text bound into the configuration digest."""

    def share_holders(self, num_clients: int) -> int:
        """The most clients that hold shares of one client's secrets (its
        neighbours and itself).  Active mode needs ``2t`` above this, so two
        conflicting survivor lists can never both reach ``t`` holders."""
        return num_clients

    def connectivity(self, num_clients: int) -> int:
        """``kappa``: a number such that, on every roster of at most
        ``num_clients`` clients and for every session id, removing fewer than
        ``kappa`` clients never disconnects the rest.  It must be a true
        lower bound: active mode's signature quorum
        (:attr:`~securefl.protocol.config.SecAggConfig.signature_quorum`,
        ``n - kappa + 1`` signers) and the guarantee of SPEC.md [SEC-1] rest
        on it, and no party can check it on every roster.  The default, 0,
        promises nothing, not even that the graph is connected: even ``n``
        signers are safe only on a connected graph (on a disconnected one the
        server learns one sum per component), so active mode refuses a graph
        that states less than 1 (:class:`~securefl.errors.ConfigurationError`
        from :class:`~securefl.protocol.config.SecAggConfig`).  Subclasses used
        in active mode must override it."""
        return 0

    def validate(self, num_clients: int, threshold: int) -> None:  # noqa: B027 - optional hook
        """Raise :class:`~securefl.errors.ConfigurationError` if the graph
        cannot work with these parameters.  The default accepts everything."""


class CompleteGraph(NeighbourGraph):
    """Every client is a neighbour of every other (Bonawitz et al. 2017)."""

    def neighbours(self, roster: Sequence[int], session_id: bytes) -> Mapping[int, frozenset[int]]:
        everyone = frozenset(roster)
        return {cid: everyone - {cid} for cid in roster}

    def describe(self) -> str:
        return "complete"

    def connectivity(self, num_clients: int) -> int:
        """``n - 1``: a complete graph stays connected whatever is removed."""
        return max(num_clients - 1, 0)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompleteGraph)

    def __hash__(self) -> int:
        return hash("complete")

    def __repr__(self) -> str:
        return "CompleteGraph()"


@functools.lru_cache(maxsize=8)
def neighbour_map(graph: NeighbourGraph, roster: tuple[int, ...],
                  session_id: bytes) -> Mapping[int, frozenset[int]]:
    """``graph.neighbours(roster, session_id)``, cached: every party of a
    session computes the same public map, and in-process simulations would
    otherwise recompute it once per client."""
    return graph.neighbours(roster, session_id)


def neighbours_of(graph: NeighbourGraph, roster: tuple[int, ...], session_id: bytes,
                  client: int) -> frozenset[int]:
    """``client``'s neighbours: ``neighbour_map(graph, roster,
    session_id)[client]``, computed without every other client's
    neighbourhood when the graph offers ``neighbours_of`` (as
    :class:`~securefl.protocol.harary.HararyGraph` does), for a client that
    needs only its own.

    Raises:
        KeyError: ``client`` is not in ``roster``.
    """
    own = getattr(graph, "neighbours_of", None)
    if callable(own):
        return frozenset(own(roster, session_id, client))
    return frozenset(neighbour_map(graph, roster, session_id)[client])
