"""What a Flower node accepts: its own policy, never the server's say-so.

The server announces each secure aggregation session in a
:class:`~securefl.flower.setup.SessionSetup`.  A node must not take whatever
it is told: a server that announces two clients (the sum is the other
client's input), a threshold of 1 (one colluding client reconstructs
everyone's masks), semi-honest mode over channels nobody authenticated, or
an invitation naming ids the node has no pinned key for, learns individual
inputs; one that announces a sparse graph too thin for the node's assumed
dropouts and corrupt clients may learn sums of a few inputs.
:class:`NodePolicy` is read from the node's **own** configuration
(the SuperNode's ``--node-config``, i.e. ``Context.node_config``), never from
the run config the server distributes, and :meth:`NodePolicy.check` refuses
any weaker setup with a :class:`SetupRefusedError` naming the
:class:`PolicyRule` before the node generates a key or sends a byte of the
session.

Nothing here imports Flower.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from securefl.errors import ConfigurationError, SecureFLError
from securefl.protocol.config import SecurityMode
from securefl.protocol.config import signature_quorum as config_signature_quorum
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph
from securefl.protocol.params import (
    log_disconnection_bound,
    sec1_minimums,
    upper_tail_quantile,
)

__all__ = [
    "ALLOW_FRESH_STATE_CONFIG",
    "INSECURE_NOISE_OPTION",
    "STATE_DIR_CONFIG",
    "NodePolicy",
    "PolicyRule",
    "SetupRefusedError",
    "allow_fresh_state",
    "check_no_insecure_noise",
    "sec1_failures",
    "signature_quorum",
]

INSECURE_NOISE_OPTION = "insecure_reproducible_noise"
"""The DP configuration option (``DPConfig``) that makes DP-SGD noise and
sampling reproducible from a public seed; accepted in Flower run configs
spelt with underscores or dashes.  A Flower node refuses any run that asks
for it."""

_PREFIX = "securefl-"
MODE_CONFIG = _PREFIX + "mode"
MIN_CLIENTS_CONFIG = _PREFIX + "min-clients"
MIN_THRESHOLD_FRACTION_CONFIG = _PREFIX + "min-threshold-fraction"
MAX_VECTOR_LENGTH_CONFIG = _PREFIX + "max-vector-length"
AUTHENTICATED_CHANNELS_CONFIG = _PREFIX + "authenticated-channels"
ALLOW_UNAUTHENTICATED_CONFIG = _PREFIX + "allow-unauthenticated-semi-honest"
ALLOW_SPARSE_GRAPH_CONFIG = _PREFIX + "allow-sparse-graph"
MIN_GRAPH_DEGREE_CONFIG = _PREFIX + "min-graph-degree"
GRAPH_DROPOUT_CONFIG = _PREFIX + "graph-dropout"
GRAPH_CORRUPT_CONFIG = _PREFIX + "graph-corrupt-fraction"
GRAPH_SECURITY_BITS_CONFIG = _PREFIX + "graph-security-bits"
STATE_DIR_CONFIG = _PREFIX + "state-dir"
"""Node config key: the directory where the node keeps its DP accountants on
disk (:mod:`securefl.flower.dpstate`); default ``$SECUREFL_STATE_DIR``, else
``securefl-state`` under the node's Flower home (``$FLWR_HOME``, else
``~/.flwr``)."""
ALLOW_FRESH_STATE_CONFIG = _PREFIX + "state-allow-fresh"
"""Node config key: ``true`` lets the node start an accountant from zero in a
federation round after the first (the operator states that this node has
never trained in the federation: it joins late); see
:mod:`securefl.flower.dpstate` for the rule it relaxes."""


class PolicyRule(str, enum.Enum):
    """The rules of a node's policy; the value names the rule in refusals."""

    MODE = "security-mode-below-policy"
    """The setup's security mode is not the one the node requires (active
    whenever the node has identity keys, unless it says otherwise)."""
    UNAUTHENTICATED_SEMI_HONEST = "semi-honest-without-authenticated-channels"
    """Semi-honest mode needs authenticated channels (TLS with server
    authentication plus SuperNode authentication); the node's operator must
    say they are in place, or opt in to running without them by name."""
    MIN_CLIENTS = "fewer-clients-than-policy"
    """Fewer invited clients than the node's minimum (with two, the sum is the
    other client's input)."""
    MIN_THRESHOLD = "threshold-below-policy"
    """A threshold ``t`` not above ``min_threshold_fraction * h``, ``h`` the
    holders of a client's shares (``n`` for the complete graph, ``k + 1``
    for a degree-``k`` sparse graph)."""
    SPARSE_GRAPH = "sparse-graph-not-allowed-by-policy"
    """A sparse (SecAgg+) graph announced to a node whose policy accepts the
    complete graph only."""
    GRAPH_DEGREE = "graph-degree-below-policy"
    """A sparse graph of degree ``k`` below the node's minimum."""
    GRAPH_CONNECTIVITY = "graph-connectivity-below-policy"
    """A sparse graph that the node's assumed dropouts and corrupt clients
    may disconnect (fcp's union bound is not below ``2^-(bits+1)``: the
    server could learn the sums of the pieces), or, in active mode, a graph
    whose stated connectivity is below 1."""
    GRAPH_THRESHOLD = "threshold-too-small-for-graph"
    """A threshold the node's assumed corrupt neighbours may reach (fcp's
    rule: ``t`` must exceed the ``1 - 2^-(bits+1)/n`` quantile of a client's
    corrupt neighbours, raised to ``ceil((t1 + k - 1.25) / 2)`` in active
    mode)."""
    CORRUPT_CLIENTS = "session-too-weak-for-assumed-corrupt-clients"
    """Active mode, with ``graph_corrupt_fraction`` above 0: SPEC.md [SEC-1]
    (the server learns at most one sum, over the honest clients on the one
    survivor list it chose) holds against ``c = floor(gamma * n)`` clients
    colluding with the server only when ``2t > h + c``, ``2q > n + c`` and
    ``q >= n - kappa + 1 + c`` (``h`` the holders of a client's shares,
    ``q`` the signature quorum the announced ``min_survivors`` gives,
    ``kappa`` the graph's connectivity: ``k`` for ``HararyGraph(k)``,
    ``n - 1`` for the complete graph); the setup breaks one of them.  Without
    them one corrupt client can let the server learn the sum of a strict
    subset of the honest inputs (e.g. 6 of 19 on ``HararyGraph(4)``, ``n =
    20``, ``t = 3``).  The server must raise ``threshold`` or
    ``min_survivors`` (run config ``min-survivors``), or use a denser graph."""
    IDS_NOT_PINNED = "client-ids-without-pinned-keys"
    """Active mode: an invited client id has no key in the node's pinned file."""
    NOT_INVITED = "node-not-invited"
    """The node's own client id is not among the invited ones."""
    VECTOR_TOO_LONG = "vector-longer-than-policy"
    """The encoded vector is longer than the node's sanity bound."""
    INSECURE_NOISE = "insecure-reproducible-noise-requested"
    """The run asks for DP noise and sampling from a public seed
    (``insecure_reproducible_noise``): noise the server can regenerate."""


class SetupRefusedError(SecureFLError):
    """A node refused a session setup or run that its own policy forbids.

    The node generated no key and sent nothing of the session; it answers the
    server with a refusal naming the rule.

    Attributes:
        rule: the :class:`PolicyRule` the setup breaks.
        fl_round: the federation round of the refused setup, or None.
        detail: what was announced and what the policy requires (no secrets).
    """

    def __init__(self, rule: PolicyRule, detail: str, *, fl_round: int | None = None) -> None:
        self.rule = rule
        self.fl_round = fl_round
        self.detail = detail
        where = f"round {fl_round}" if fl_round is not None else "no round"
        super().__init__(f"node policy refused the server's setup for {where}:"
                         f" rule '{rule.value}': {detail}")


def _env_name(key: str) -> str:
    return key.upper().replace("-", "_")


def _bool(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key, os.environ.get(_env_name(key), False))
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigurationError(f"node config {key} must be true or false, got {value!r}")


def _flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigurationError(f"node config {key} must be true or false, got {value!r}")


def _rate(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"node config {key} must be a number, got {value!r}")
    return float(value)


def _int(config: Mapping[str, Any], key: str, default: int, low: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigurationError(f"node config {key} must be an integer >= {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class NodePolicy:
    """What one node accepts.

    Attributes:
        mode: the security mode the node requires; None: active mode if the
            node has identity keys (``has_identity``), else either mode.
        has_identity: the node was provisioned an identity key and pinned keys.
        min_clients: the fewest invited clients the node takes part with (>= 3).
        min_threshold_fraction: the threshold must exceed this fraction of the
            invited clients (0.5: a majority, the semi-honest default).
        max_vector_length: the longest encoded vector the node will mask.
        authenticated_channels: the operator states that this SuperNode talks
            to the SuperLink over TLS with server authentication and with
            SuperNode authentication (the node cannot check it itself).
        allow_unauthenticated_semi_honest: the operator opts in, by name, to
            semi-honest mode without authenticated channels, where anyone who
            controls the network, or a server that deviates, can learn this
            node's input.
        allow_sparse_graph: the node takes part in sessions over a SecAgg+
            Harary graph (each client masks with and deals shares to only
            its ``k`` neighbours) that passes the rules below; False: the
            complete graph only.
        min_graph_degree: the smallest degree ``k`` of a sparse graph (>= 2).
        graph_dropout: ``delta``, the fraction of the invited clients the
            node assumes may drop out, in [0, 1).
        graph_corrupt_fraction: ``gamma``, the fraction the node assumes may
            collude with the server, in [0, 1): ``c = floor(gamma * n)`` of the
            ``n`` invited clients.  It enters fcp's probabilistic graph bounds
            below and, in active mode, SPEC.md [SEC-1]'s deterministic
            conditions for ``c`` corrupt clients
            (:attr:`PolicyRule.CORRUPT_CLIENTS`, :func:`sec1_failures`); in
            semi-honest mode only fcp's bounds.
        graph_security_bits: ``sigma`` (1..256): a sparse graph is accepted
            only if, under ``delta`` and ``gamma``, fcp's bounds (those of
            :func:`~securefl.protocol.params.find_graph_parameters`) put the
            chance that it disconnects, and that a client's corrupt
            neighbours reach the threshold, below ``2^-(sigma+1)``.
    """

    mode: SecurityMode | None = None
    has_identity: bool = False
    min_clients: int = 3
    min_threshold_fraction: float = 0.5
    max_vector_length: int = 1 << 24
    authenticated_channels: bool = False
    allow_unauthenticated_semi_honest: bool = False
    allow_sparse_graph: bool = True
    min_graph_degree: int = 2
    graph_dropout: float = 0.1
    graph_corrupt_fraction: float = 0.0
    graph_security_bits: int = 40

    def __post_init__(self) -> None:
        if self.mode is not None:
            object.__setattr__(self, "mode", SecurityMode(self.mode))
        if self.min_clients < 3:
            raise ConfigurationError(f"min_clients must be >= 3, got {self.min_clients}")
        if not (math.isfinite(self.min_threshold_fraction)
                and 0.5 <= self.min_threshold_fraction < 1):
            raise ConfigurationError("min_threshold_fraction must be in [0.5, 1), got"
                                     f" {self.min_threshold_fraction}")
        if self.max_vector_length < 2:
            raise ConfigurationError("max_vector_length must be >= 2")
        if isinstance(self.min_graph_degree, bool) or not isinstance(
                self.min_graph_degree, int) or self.min_graph_degree < 2:
            raise ConfigurationError(f"min_graph_degree must be an int >= 2, got"
                                     f" {self.min_graph_degree!r}")
        for name in ("graph_dropout", "graph_corrupt_fraction"):
            rate = getattr(self, name)
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not (
                    math.isfinite(rate) and 0 <= rate < 1):
                raise ConfigurationError(f"{name} must be in [0, 1), got {rate!r}")
        bits = self.graph_security_bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 256:
            raise ConfigurationError(f"graph_security_bits must be an int in 1..256, got"
                                     f" {bits!r}")

    @property
    def required_mode(self) -> SecurityMode | None:
        """The mode the node requires (None: either)."""
        if self.mode is not None:
            return self.mode
        return SecurityMode.ACTIVE if self.has_identity else None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any], *,
                         has_identity: bool) -> NodePolicy:
        """Read the policy from a node's own configuration (keys
        ``securefl-mode``, ``securefl-min-clients``,
        ``securefl-min-threshold-fraction``, ``securefl-max-vector-length``,
        ``securefl-authenticated-channels``,
        ``securefl-allow-unauthenticated-semi-honest``,
        ``securefl-allow-sparse-graph``, ``securefl-min-graph-degree``,
        ``securefl-graph-dropout``, ``securefl-graph-corrupt-fraction``,
        ``securefl-graph-security-bits``); missing keys take
        the defaults above, except that the two operator statements may also
        come from the node's environment (``SECUREFL_AUTHENTICATED_CHANNELS``,
        ``SECUREFL_ALLOW_UNAUTHENTICATED_SEMI_HONEST`` set to ``true``), for
        runtimes that give nodes no node config (Flower's simulation engine).

        Raises:
            ConfigurationError: a value of the wrong type or out of range.
        """
        mode_value = node_config.get(MODE_CONFIG, "")
        try:
            mode = SecurityMode(mode_value) if mode_value not in ("", None) else None
        except ValueError:
            raise ConfigurationError(f"node config {MODE_CONFIG} must be 'active' or"
                                     f" 'semi-honest', got {mode_value!r}") from None
        fraction = node_config.get(MIN_THRESHOLD_FRACTION_CONFIG, 0.5)
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise ConfigurationError(f"node config {MIN_THRESHOLD_FRACTION_CONFIG} must be a"
                                     f" number, got {fraction!r}")
        return cls(
            mode=mode, has_identity=has_identity,
            min_clients=_int(node_config, MIN_CLIENTS_CONFIG, 3, 3),
            min_threshold_fraction=float(fraction),
            max_vector_length=_int(node_config, MAX_VECTOR_LENGTH_CONFIG, 1 << 24, 2),
            authenticated_channels=_bool(node_config, AUTHENTICATED_CHANNELS_CONFIG),
            allow_unauthenticated_semi_honest=_bool(node_config, ALLOW_UNAUTHENTICATED_CONFIG),
            allow_sparse_graph=_flag(node_config, ALLOW_SPARSE_GRAPH_CONFIG, True),
            min_graph_degree=_int(node_config, MIN_GRAPH_DEGREE_CONFIG, 2, 2),
            graph_dropout=_rate(node_config, GRAPH_DROPOUT_CONFIG, 0.1),
            graph_corrupt_fraction=_rate(node_config, GRAPH_CORRUPT_CONFIG, 0.0),
            graph_security_bits=_int(node_config, GRAPH_SECURITY_BITS_CONFIG, 40, 1),
        )

    def check(self, *, fl_round: int, mode: SecurityMode, num_clients: int, threshold: int,
              client_ids: Iterable[int], vector_length: int, my_id: int,
              pinned_ids: Iterable[int] | None, graph: NeighbourGraph | None = None,
              min_survivors: int | None = None) -> None:
        """Refuse a session weaker than this policy.

        Args:
            fl_round, mode, num_clients, threshold, client_ids, vector_length:
                what the server announced.
            my_id: this node's client id.
            pinned_ids: the client ids of the node's pinned keys (active mode).
            graph: the announced graph, as the node built it from the setup
                (:func:`~securefl.flower.setup.parse_graph`); None: complete.
            min_survivors: the announced ``min_survivors``
                (:attr:`~securefl.flower.setup.SessionSetup.min_survivors`);
                None: the threshold.  In active mode it sets the signature
                quorum the [SEC-1] rule checks.

        Raises:
            SetupRefusedError: naming the first rule the setup breaks.
        """
        def refuse(rule: PolicyRule, detail: str) -> SetupRefusedError:
            return SetupRefusedError(rule, detail, fl_round=fl_round)

        ids = tuple(client_ids)
        graph = CompleteGraph() if graph is None else graph
        required = self.required_mode
        if required is not None and mode is not required:
            why = " (the node has identity keys)" if self.mode is None else ""
            raise refuse(PolicyRule.MODE, f"the server announced {mode.value} mode, the node"
                                          f" requires {required.value}{why}")
        if mode is SecurityMode.SEMI_HONEST and not (
                self.authenticated_channels or self.allow_unauthenticated_semi_honest):
            raise refuse(PolicyRule.UNAUTHENTICATED_SEMI_HONEST,
                         "semi-honest mode needs TLS with server and SuperNode authentication:"
                         f" set node config {AUTHENTICATED_CHANNELS_CONFIG}=true once they are"
                         f" in place, or {ALLOW_UNAUTHENTICATED_CONFIG}=true to run without")
        if my_id not in ids:
            raise refuse(PolicyRule.NOT_INVITED, f"client {my_id} is not among the invited ids")
        if num_clients < self.min_clients:
            raise refuse(PolicyRule.MIN_CLIENTS, f"{num_clients} clients announced, the node"
                                                 f" requires at least {self.min_clients}")
        self._check_graph(graph, mode, num_clients, threshold, refuse)
        holders = graph.share_holders(num_clients)
        if not threshold > self.min_threshold_fraction * holders:
            raise refuse(PolicyRule.MIN_THRESHOLD,
                         f"threshold {threshold} for {holders} holders of a client's shares"
                         f" ({graph.describe()} graph, {num_clients} clients), the node"
                         f" requires more than {self.min_threshold_fraction:g} x {holders}")
        self._check_graph_threshold(graph, mode, num_clients, threshold, refuse)
        if mode is SecurityMode.ACTIVE:
            self._check_corrupt_clients(graph, num_clients, threshold, min_survivors, refuse)
            pinned = set(pinned_ids or ())
            missing = sorted(set(ids) - pinned)
            if missing:
                raise refuse(PolicyRule.IDS_NOT_PINNED,
                             f"no pinned identity key for invited clients {missing[:10]}")
        if vector_length > self.max_vector_length:
            raise refuse(PolicyRule.VECTOR_TOO_LONG,
                         f"vector length {vector_length} exceeds the node's bound"
                         f" {self.max_vector_length}")

    def _assumed(self) -> str:
        return (f"the node assumes up to {self.graph_dropout:g} of the clients drop and"
                f" {self.graph_corrupt_fraction:g} collude, security 2^-"
                f"{self.graph_security_bits}")

    def _check_graph(self, graph: NeighbourGraph, mode: SecurityMode, n: int, threshold: int,
                     refuse: Any) -> None:
        """The graph rules that do not involve the threshold: sparse graphs
        allowed, degree, connectivity (fcp's union bound under the node's
        assumed dropout and corrupt rates; active mode: stated connectivity
        at least 1)."""
        degree = graph.share_holders(n) - 1
        if mode is SecurityMode.ACTIVE and graph.connectivity(n) < 1:
            raise refuse(PolicyRule.GRAPH_CONNECTIVITY,
                         f"the {graph.describe()} graph states connectivity"
                         f" {graph.connectivity(n)} on {n} clients; active mode needs at least 1")
        if degree >= n - 1:
            return  # every client neighbours every other: the complete graph
        if not self.allow_sparse_graph:
            raise refuse(PolicyRule.SPARSE_GRAPH,
                         f"the server announced the sparse {graph.describe()} graph; node config"
                         f" {ALLOW_SPARSE_GRAPH_CONFIG}=false accepts the complete graph only")
        if degree < self.min_graph_degree:
            raise refuse(PolicyRule.GRAPH_DEGREE,
                         f"the {graph.describe()} graph gives a client {degree} neighbours, the"
                         f" node requires at least {self.min_graph_degree}")
        bound = log_disconnection_bound(n, self.graph_corrupt_fraction, self.graph_dropout,
                                        degree)
        if not bound < -(self.graph_security_bits + 1) * math.log(2):
            raise refuse(PolicyRule.GRAPH_CONNECTIVITY,
                         f"the {graph.describe()} graph on {n} clients may disconnect once the"
                         f" assumed dropped and corrupt clients are removed (fcp's bound"
                         f" 2^{bound / math.log(2):.1f}, the node requires below 2^-"
                         f"{self.graph_security_bits + 1}; {self._assumed()})")

    def _check_graph_threshold(self, graph: NeighbourGraph, mode: SecurityMode, n: int,
                               threshold: int, refuse: Any) -> None:
        """fcp's threshold rule for the node's assumed corrupt clients: ``t``
        must exceed ``t1``, the ``1 - 2^-(sigma+1)/n`` quantile of a
        client's corrupt neighbours (hypergeometric), raised to
        ``ceil((t1 + k - 1.25) / 2)`` in active mode (a semi-malicious
        server, as :func:`~securefl.protocol.params.find_graph_parameters`)."""
        degree = graph.share_holders(n) - 1
        corrupt = math.floor((self.graph_corrupt_fraction + 1e-14) * n)
        t1 = upper_tail_quantile(n, corrupt, degree,
                                 2.0 ** -(self.graph_security_bits + 1) / n)
        if mode is SecurityMode.ACTIVE:
            t1 = math.ceil((t1 + degree - 1.25) / 2)
        if not threshold > t1:
            server = "semi-malicious" if mode is SecurityMode.ACTIVE else "semi-honest"
            raise refuse(PolicyRule.GRAPH_THRESHOLD,
                         f"threshold {threshold} with {degree} neighbours per client on {n}"
                         f" clients: the node requires more than {t1} ({self._assumed()};"
                         f" fcp's rule against a {server} server)")

    def _check_corrupt_clients(self, graph: NeighbourGraph, n: int, threshold: int,
                               min_survivors: int | None, refuse: Any) -> None:
        """Active mode: SPEC.md [SEC-1]'s three conditions for ``c =
        floor(gamma * n)`` corrupt clients (the rounding of
        :meth:`_check_graph_threshold`); with ``gamma = 0`` they hold for
        every configuration active mode accepts."""
        corrupt = math.floor((self.graph_corrupt_fraction + 1e-14) * n)
        failures = sec1_failures(num_clients=n, threshold=threshold,
                                 min_survivors=min_survivors, graph=graph, corrupt=corrupt)
        if failures:
            raise refuse(PolicyRule.CORRUPT_CLIENTS,
                         f"[SEC-1] for c = {corrupt} corrupt of n = {n} (gamma"
                         f" {self.graph_corrupt_fraction:g}): " + "; ".join(failures))


def signature_quorum(*, num_clients: int, threshold: int, min_survivors: int | None,
                     graph: NeighbourGraph) -> int:
    """The active-mode signature quorum ``q`` a session of ``num_clients``
    clients with this ``threshold``, ``min_survivors`` (None: the threshold)
    and ``graph`` runs with (:func:`securefl.protocol.config.signature_quorum`,
    what :attr:`~securefl.protocol.SecAggConfig.signature_quorum` computes)."""
    floor = threshold if min_survivors is None else max(threshold, min_survivors)
    return config_signature_quorum(num_clients, floor, graph)


def sec1_failures(*, num_clients: int, threshold: int, min_survivors: int | None,
                  graph: NeighbourGraph, corrupt: int) -> list[str]:
    """Which of SPEC.md [SEC-1]'s conditions fail against ``corrupt`` (``c``)
    clients colluding with the server, with what would satisfy them (short:
    the server logs 300 characters of a refusal's reason); empty when
    ``2t > h + c``, ``2q > n + c`` and ``q >= n - kappa + 1 + c`` all hold
    (``h`` the share holders, ``q`` the :func:`signature_quorum`, ``kappa``
    the graph's connectivity, at most ``n - 1``).  The least ``t`` and ``q``
    that satisfy them are :func:`~securefl.protocol.params.sec1_minimums`'s:
    the quorum conditions hold when ``min_survivors`` reaches that ``q``
    (and for ``c > 0`` only then), possible only when it is at most ``n``
    (``c <= kappa - 1``); the first holds exactly when ``t`` reaches that
    ``t``, possible only for ``c < h`` (``t <= h``)."""
    n, t, c = num_clients, threshold, corrupt
    holders = graph.share_holders(n)
    kappa = min(max(graph.connectivity(n), 1), n - 1)
    q = signature_quorum(num_clients=n, threshold=t, min_survivors=min_survivors, graph=graph)
    need_t, need_q = sec1_minimums(n, holders, kappa, c)
    failures = []
    if t < need_t:
        failures.append(f"2t > h + c fails (t = {t}, h = {holders}): "
                        + (f"needs threshold >= {need_t}" if need_t <= holders else
                           f"no threshold can on {graph.describe()}, use a denser graph"))
    quorum = []
    if not 2 * q > n + c:
        quorum.append(f"2q > n + c fails (q = {q})")
    if not q >= n - kappa + 1 + c:
        quorum.append(f"q >= n - kappa + 1 + c fails (q = {q}, kappa = {kappa})")
    if quorum:
        quorum[-1] += (f": needs min_survivors >= {need_q} (run config min-survivors)"
                       if need_q <= n else
                       f": no min_survivors can (kappa = {kappa} covers c <= {kappa - 1}),"
                       " use a denser graph")
    return failures + quorum


def allow_fresh_state(node_config: Mapping[str, Any]) -> bool:
    """The node config ``securefl-state-allow-fresh`` (or the environment
    variable ``SECUREFL_STATE_ALLOW_FRESH``): may the node start an
    accountant from zero in a round after the first?

    Raises:
        ConfigurationError: a value that is not true or false.
    """
    return _bool(node_config, ALLOW_FRESH_STATE_CONFIG)


def check_no_insecure_noise(*configs: Mapping[str, Any] | None,
                            fl_round: int | None = None) -> None:
    """Refuse a run whose configuration asks for reproducible (insecure) DP
    noise: any of ``configs`` (the run config, the train message's config)
    holding ``insecure_reproducible_noise`` or ``insecure-reproducible-noise``
    set to anything but false.

    Raises:
        SetupRefusedError: rule :attr:`PolicyRule.INSECURE_NOISE`.
    """
    for config in configs:
        if config is None:
            continue
        for key in (INSECURE_NOISE_OPTION, INSECURE_NOISE_OPTION.replace("_", "-")):
            if key in config and config[key] not in (False, 0, "", "false", "False", None):
                raise SetupRefusedError(
                    PolicyRule.INSECURE_NOISE,
                    f"the run sets {key}={config[key]!r}: DP noise and sampling from a public"
                    " seed can be regenerated by the server; this node trains only with noise"
                    " from the OS CSPRNG", fl_round=fl_round)



# -- the node's DP limits ------------------------------------------------------------
# Kept apart from NodePolicy (secure aggregation) on purpose: these bound the DP
# parameters and the budget of the node's own training, which the server's run
# config would otherwise choose alone.

MAX_EPSILON_CONFIG = _PREFIX + "max-epsilon"
"""Node config key: the node's own privacy budget (epsilon at the node's
delta, over the whole federation); default :data:`DEFAULT_MAX_EPSILON`."""
MAX_DELTA_CONFIG = _PREFIX + "max-delta"
"""Node config key: the largest delta the node states its budget at;
default :data:`DEFAULT_MAX_DELTA`."""
MIN_NOISE_MULTIPLIER_CONFIG = _PREFIX + "min-noise-multiplier"
"""Node config key: the smallest DP-SGD noise multiplier the node trains
with; default :data:`DEFAULT_MIN_NOISE_MULTIPLIER`."""
MAX_SAMPLE_RATE_CONFIG = _PREFIX + "max-sample-rate"
"""Node config key: the largest Poisson sample rate the node trains with;
default :data:`DEFAULT_MAX_SAMPLE_RATE`."""
ALLOW_WEIGHTING_EXAMPLES_CONFIG = _PREFIX + "allow-weighting-examples"
"""Node config key: ``true`` lets the run weight the node's update by its
record count (``weighting = "examples"``); default false."""
__all__ += ["DPLimitRefusedError", "DPLimitRule", "NodeDPLimits"]

DEFAULT_MAX_EPSILON = 10.0
"""Above the project's default target (7.5, ``securefl simulate``), which
it leaves room for; a run that asks for more is refused."""
DEFAULT_MAX_DELTA = 1e-5
"""The delta every securefl epsilon is stated at."""
DEFAULT_MIN_NOISE_MULTIPLIER = 0.5
DEFAULT_MAX_SAMPLE_RATE = 1.0
"""No bound of its own: the sample rate is in the budget's accounting."""
RUN_DEFAULT_SAMPLE_RATE = 0.5
"""The sample rate of a run config without ``sample-rate``
(``securefl.privacy.client.DEFAULT_SAMPLE_RATE``, not imported: this module
stays free of torch)."""


class DPLimitRule(str, enum.Enum):
    """The rules of a node's DP limits; the value names the rule in
    refusals (the ``refused`` field of the reply, as a :class:`PolicyRule`)."""

    NOISE_MULTIPLIER = "noise-multiplier-below-node-minimum"
    """The run's noise multiplier (given, or calibrated from its target
    epsilon) is below the node's ``securefl-min-noise-multiplier``."""
    TARGET_EPSILON = "target-epsilon-above-node-budget"
    """The run's ``target-epsilon`` exceeds the node's ``securefl-max-epsilon``."""
    SAMPLE_RATE = "sample-rate-above-node-maximum"
    """The run's ``sample-rate`` exceeds the node's ``securefl-max-sample-rate``."""
    WEIGHTING = "weighting-by-examples-not-allowed-by-node"
    """The run sets ``weighting = "examples"`` (the node's record count
    enters the sum and its epsilon becomes replace-one, a weaker guarantee)
    and the node's ``securefl-allow-weighting-examples`` is not true."""


class DPLimitRefusedError(SetupRefusedError):
    """A node refused a run whose DP parameters exceed its own limits
    (:class:`NodeDPLimits`), before it trained or sent anything of the
    session; ``rule`` is a :class:`DPLimitRule`."""

    def __init__(self, rule: DPLimitRule, detail: str, *, fl_round: int | None = None) -> None:
        super().__init__(rule, detail, fl_round=fl_round)  # type: ignore[arg-type]


def _limit(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, os.environ.get(_env_name(key), default))
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigurationError(f"node config {key} must be a number, got"
                                     f" {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"node config {key} must be a number, got {value!r}")
    return float(value)


def _run_number(run_config: Mapping[str, Any], key: str) -> float | None:
    """A DP number of the run config, as ``client_train.run_values`` reads
    it (absent, empty or 0: not set)."""
    value = run_config.get(key)
    if value is None or value == "" or (isinstance(value, int | float) and value == 0):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"bad run config: {key}={value!r}") from None


@dataclass(frozen=True)
class NodeDPLimits:
    """What DP training a node accepts, read from its **own** configuration,
    never from the run config: the server chooses the run's DP parameters,
    the node bounds them and keeps its own budget.

    Attributes:
        max_epsilon: the node's privacy budget for the federation (finite,
            > 0): its budget guard refuses any round that would take its
            epsilon past ``min(max_epsilon, the run's target-epsilon)``, and
            it refuses a run whose ``target-epsilon`` exceeds it.
        max_delta: the guard states epsilon at ``min(max_delta, the run's
            delta)`` (the run's delta is 1e-5), in (0, 1).
        min_noise_multiplier: the smallest noise multiplier (given by the
            run, or calibrated from its target) the node trains with (>= 0).
        max_sample_rate: the largest Poisson sample rate, in (0, 1].
        allow_weighting_examples: the node lets the run weight its update by
            its record count (``weighting = "examples"``: the count enters the
            secure sum and the node's epsilon is stated for replace-one
            adjacency, which protects less than add/remove-one); default
            False: such a run is refused.
    """

    max_epsilon: float = DEFAULT_MAX_EPSILON
    max_delta: float = DEFAULT_MAX_DELTA
    min_noise_multiplier: float = DEFAULT_MIN_NOISE_MULTIPLIER
    max_sample_rate: float = DEFAULT_MAX_SAMPLE_RATE
    allow_weighting_examples: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_epsilon) and self.max_epsilon > 0):
            raise ConfigurationError(f"{MAX_EPSILON_CONFIG} must be a finite number > 0, got"
                                     f" {self.max_epsilon!r}")
        if not 0 < self.max_delta < 1:
            raise ConfigurationError(f"{MAX_DELTA_CONFIG} must be in (0, 1), got"
                                     f" {self.max_delta!r}")
        if not (math.isfinite(self.min_noise_multiplier) and self.min_noise_multiplier >= 0):
            raise ConfigurationError(f"{MIN_NOISE_MULTIPLIER_CONFIG} must be a finite number"
                                     f" >= 0, got {self.min_noise_multiplier!r}")
        if not 0 < self.max_sample_rate <= 1:
            raise ConfigurationError(f"{MAX_SAMPLE_RATE_CONFIG} must be in (0, 1], got"
                                     f" {self.max_sample_rate!r}")

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeDPLimits:
        """Read the limits from the node's own configuration (keys
        ``securefl-max-epsilon``, ``securefl-max-delta``,
        ``securefl-min-noise-multiplier``, ``securefl-max-sample-rate``,
        ``securefl-allow-weighting-examples``), else from the node's
        environment (``SECUREFL_MAX_EPSILON``, ...: for runtimes that give
        nodes no node config), else the defaults.

        Raises:
            ConfigurationError: a value that is not a number, or out of range.
        """
        return cls(max_epsilon=_limit(node_config, MAX_EPSILON_CONFIG, DEFAULT_MAX_EPSILON),
                   max_delta=_limit(node_config, MAX_DELTA_CONFIG, DEFAULT_MAX_DELTA),
                   min_noise_multiplier=_limit(node_config, MIN_NOISE_MULTIPLIER_CONFIG,
                                               DEFAULT_MIN_NOISE_MULTIPLIER),
                   max_sample_rate=_limit(node_config, MAX_SAMPLE_RATE_CONFIG,
                                          DEFAULT_MAX_SAMPLE_RATE),
                   allow_weighting_examples=_bool(node_config,
                                                  ALLOW_WEIGHTING_EXAMPLES_CONFIG))

    def check_weighting(self, weighting: str, *, fl_round: int | None = None) -> None:
        """Refuse a run that weights updates by record count unless the node
        allows it.

        Raises:
            DPLimitRefusedError: rule :attr:`DPLimitRule.WEIGHTING`.
        """
        if str(weighting) == "examples" and not self.allow_weighting_examples:
            raise DPLimitRefusedError(
                DPLimitRule.WEIGHTING,
                "the run weights updates by record count (weighting = examples: the count"
                " enters the sum, epsilon becomes replace-one); set node config"
                f" {ALLOW_WEIGHTING_EXAMPLES_CONFIG}=true to allow it", fl_round=fl_round)

    def check(self, *, noise_multiplier: float | None, target_epsilon: float | None,
              sample_rate: float, fl_round: int | None = None) -> None:
        """Refuse a run whose DP parameters exceed the limits (a calibrated
        noise multiplier is checked with :meth:`check_noise` once known).

        Raises:
            DPLimitRefusedError: naming the first rule the run breaks.
        """
        if noise_multiplier is not None:
            self.check_noise(noise_multiplier, fl_round=fl_round)
        if target_epsilon is not None and not target_epsilon <= self.max_epsilon:
            raise DPLimitRefusedError(
                DPLimitRule.TARGET_EPSILON,
                f"the run sets target-epsilon {target_epsilon:g}, the node's budget"
                f" ({MAX_EPSILON_CONFIG}) is {self.max_epsilon:g}", fl_round=fl_round)
        if not sample_rate <= self.max_sample_rate:
            raise DPLimitRefusedError(
                DPLimitRule.SAMPLE_RATE,
                f"the run sets sample-rate {sample_rate:g}, the node allows at most"
                f" {self.max_sample_rate:g} ({MAX_SAMPLE_RATE_CONFIG})", fl_round=fl_round)

    def check_noise(self, noise_multiplier: float, *, fl_round: int | None = None) -> None:
        """Refuse a noise multiplier below the node's minimum.

        Raises:
            DPLimitRefusedError: rule :attr:`DPLimitRule.NOISE_MULTIPLIER`.
        """
        if not noise_multiplier >= self.min_noise_multiplier:
            raise DPLimitRefusedError(
                DPLimitRule.NOISE_MULTIPLIER,
                f"the run trains with noise multiplier {noise_multiplier:g}, the node"
                f" requires at least {self.min_noise_multiplier:g}"
                f" ({MIN_NOISE_MULTIPLIER_CONFIG})", fl_round=fl_round)

    def check_run_config(self, run_config: Mapping[str, Any], *,
                         fl_round: int | None = None) -> None:
        """:meth:`check_weighting` and :meth:`check` on the DP keys of a
        securefl Flower run config (``weighting``, ``noise-multiplier``,
        ``target-epsilon``, ``sample-rate``).

        Raises:
            DPLimitRefusedError: the run exceeds the limits.
            ConfigurationError: a DP value that is not a number.
        """
        rate = run_config.get("sample-rate", RUN_DEFAULT_SAMPLE_RATE)
        try:
            sample_rate = float(rate)
        except (TypeError, ValueError):
            raise ConfigurationError(f"bad run config: sample-rate={rate!r}") from None
        self.check_weighting(str(run_config.get("weighting", "uniform")), fl_round=fl_round)
        self.check(noise_multiplier=_run_number(run_config, "noise-multiplier"),
                   target_epsilon=_run_number(run_config, "target-epsilon"),
                   sample_rate=sample_rate, fl_round=fl_round)

    def budget(self, target_epsilon: float | None) -> float:
        """The epsilon the node's budget guard allows: its own budget, or the
        run's target if smaller."""
        if target_epsilon is None:
            return self.max_epsilon
        return min(self.max_epsilon, float(target_epsilon))

    def delta(self, run_delta: float) -> float:
        """The delta the node's budget guard states epsilon at."""
        return min(self.max_delta, float(run_delta))
