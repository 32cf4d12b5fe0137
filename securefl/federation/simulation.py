"""An in-process federation: Opacus DP-SGD clients, fixed-point encoding,
secure aggregation (or plain summation), a server optimizer, the privacy
ledger, checkpoints, metrics and plots.

Every round:

0. with user-level DP and ``client_sample_rate < 1``, the cohort is drawn
   (Poisson sampling from ``os.urandom``); the other clients neither train
   nor spend (``not-sampled``);
1. each client checks its budget guard and refuses the round if it would
   exceed its budget; the others load the global weights and train with
   DP-SGD (their accountants record the steps; noise and sampling from
   ``os.urandom`` unless ``insecure_reproducible_noise``);
2. each client encodes its update (secure mode: rounding with its own secret
   randomness) or clips and scales it (plain mode); its weight is 1 unless
   ``weighting`` is ``examples``;
   an update the encoder refuses (NaN, shape...) does not take part;
3. the injected dropouts (each client drops with probability ``dropout`` at a
   protocol round drawn uniformly) are passed to secure aggregation, which
   returns the sum of the survivors' updates or aborts;
4. on success: the server applies the average with its optimizer.  On
   abort: the global model and the server optimizer are left exactly as they
   were.  Either way the round is then settled at once by
   :class:`~securefl.federation.round.RoundRecorder`: one transaction of the
   run store commits one ledger row per client (``entered_sum = false`` for
   the clients of an aborted round, who spent privacy all the same), the
   checkpoint (model unchanged after an abort), every client's accountant
   history and the position in the dropout schedule; the ledger, checkpoint
   and metrics files are then exported from it.

Privacy spend is durable before training: before any client trains, the run
store commits one ``in-flight`` ledger row per client about to train,
charging the steps it is about to take; a SIGKILL at any later point leaves
that charge on disk, and :func:`resume_simulation` continues the run from
its last committed round (see :mod:`securefl.federation.round`).
"""

from __future__ import annotations

import copy
import enum
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from securefl.crashpoints import crash_point
from securefl.encoding import EncodedUpdate, FixedPointCodec, PlainUpdate, max_frac_bits
from securefl.errors import (
    AbortError,
    ConfigurationError,
    EncodingError,
    PrivacyBudgetExceededError,
)
from securefl.federation.client_update import Admission, admit, client_update
from securefl.federation.cohort import (
    MIN_COHORT,
    cohort_bound,
    cohort_threshold,
    poisson_cohort,
)
from securefl.federation.data import (
    FederatedData,
    load_breast_cancer_federated,
    load_digits_federated,
)
from securefl.federation.local_client import LocalClient
from securefl.federation.model import make_mlp
from securefl.federation.optimizers import ServerOptimizerConfig, ServerOptimizerKind
from securefl.federation.options import DEFAULT_TARGET_EPSILON, DatasetName
from securefl.federation.round import (
    METRICS_FILENAME,
    PLOT_FILENAME,
    ClientOutcome,
    ClientRoundReport,
    Evaluator,
    RoundRecorder,
    RoundReport,
)
from securefl.federation.server import AggregateOutcome, AggregationMode, Server
from securefl.privacy.accounting import AccountantKind
from securefl.privacy.client import (
    DEFAULT_SAMPLE_RATE,
    DPConfig,
    PrivateClient,
    Weighting,
    adjacency_for,
    make_private_compatible,
)
from securefl.privacy.distributed import (
    PrivacyLevel,
    UserLevelPlan,
    plan_user_level,
    user_level_entry,
)
from securefl.privacy.ledger import Participation, UserLevelEntry, parse_ledger
from securefl.privacy.options import Adjacency
from securefl.protocol import Round
from securefl.protocol.config import (
    ROSTER_DELIVERIES,
    SecAggConfig,
    SecurityMode,
    default_threshold,
    session_roster_delivery,
)
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph
from securefl.protocol.harary import HararyGraph
from securefl.protocol.inmemory import secure_sum
from securefl.protocol.noise import NoisePlan
from securefl.protocol.params import ServerModel, find_graph_parameters

__all__ = [
    "DEFAULT_TARGET_EPSILON",
    "METRICS_FILENAME",
    "PLOT_FILENAME",
    "USER_LEVEL_DEFAULTS",
    "ClientRoundReport",
    "DatasetName",
    "GraphKind",
    "RoundReport",
    "SecAggPlan",
    "SimulationConfig",
    "SimulationResult",
    "dropout_schedule",
    "load_data",
    "preflight",
    "resume_simulation",
    "run_simulation",
]


USER_LEVEL_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {"num_clients": 300, "client_sample_rate": 0.3, "bits": 16, "rounds": 20})
"""A default federation for user-level DP (``privacy`` ``"user-level"`` or
``"both"``), which :class:`SimulationConfig`'s own defaults (10 clients,
``Z_2^32``, every client in every round) cannot run: no session of 10
clients takes the Skellam noise of a user-level epsilon of 8.  300 clients
of digits (about 5 training images each, see
:func:`~securefl.federation.data.default_min_size`), each sampled with
probability 0.3 per round, in ``Z_2^16``, over 20 rounds, at the default
user epsilon.  ``securefl simulate`` applies each of these that its flag
does not set; the library takes them explicitly:
``SimulationConfig(privacy="user-level", **USER_LEVEL_DEFAULTS)``."""


class GraphKind(str, enum.Enum):
    """Who masks with whom in the secure aggregation sessions."""

    COMPLETE = "complete"
    """Every client with every other (Bonawitz et al. 2017)."""
    HARARY = "harary"
    """SecAgg+: a degree-k Harary graph (:class:`~securefl.protocol.HararyGraph`)."""


@dataclass(frozen=True)
class SecAggPlan:
    """The secure aggregation parameters a :class:`SimulationConfig` implies.

    Attributes:
        graph: the :class:`NeighbourGraph` every session uses.
        threshold: the Shamir threshold ``t`` (``config.threshold`` when given).
        degree: ``k`` of a Harary graph (None for the complete graph).
        explanation: why (the parameter finder's account, when it chose ``k``).
        roster_delivery: the roster delivery the federation asks for
            (``"full"`` or ``"merkle"``); see :meth:`session_roster_delivery`.
    """

    graph: NeighbourGraph
    threshold: int
    degree: int | None
    explanation: str
    roster_delivery: str = "full"

    def session_roster_delivery(self, num_clients: int) -> str:
        """The roster delivery of a session of ``num_clients`` clients:
        ``"merkle"`` when asked for and :attr:`graph` is sparse for that
        roster, ``"full"`` otherwise
        (:func:`~securefl.protocol.config.session_roster_delivery`)."""
        return session_roster_delivery(self.roster_delivery, self.graph, num_clients)


@dataclass(frozen=True)
class SimulationConfig:
    """Everything a simulated federation needs.  At most one of
    ``noise_multiplier`` and ``target_epsilon`` is given; with neither, every
    client targets :data:`DEFAULT_TARGET_EPSILON`.  ``server_lr`` defaults to
    0.1 for FedAdam and 1.0 otherwise.

    Secure aggregation runs in ``security_mode`` (``"semi-honest"``, default,
    or ``"active"``: signed keys and a consistency round against a server
    that lies about who dropped) over ``graph`` (``"complete"``, default, or
    ``"harary"``: SecAgg+, each client masks with and shares to only
    ``graph_degree`` others; without ``graph_degree`` the degree and the
    threshold come from :func:`~securefl.protocol.params.find_graph_parameters`
    for ``num_clients``, the ``dropout`` rate and no corrupt clients, against
    a semi-honest or, in active mode, a semi-malicious server).  See
    :meth:`secagg_plan`.

    ``roster_delivery`` is ``"full"`` (default: every client receives the
    whole key roster, O(n) bytes) or ``"merkle"`` (graph harary only: each
    client receives its own and its neighbours' roster entries with Merkle
    inclusion proofs, O(k log n) bytes; SPEC.md section 10.1a).  With
    ``"merkle"`` every session whose graph is sparse for its roster uses it;
    a session whose roster is too small for the graph to be sparse (a
    user-level session over ``k + 1`` encoded updates, where the Harary
    graph is complete) falls back to ``"full"``, and each round's report
    says which one its session used (``roster_delivery`` in
    ``metrics.json``).  ``"full"`` leaves :meth:`to_json` (and so
    ``metrics.json`` and the run store) exactly as before the option
    existed, so runs recorded before it resume.

    ``privacy`` is ``"record-level"`` (DP-SGD, default), ``"both"`` (DP-SGD
    and user-level distributed DP: Skellam noise in the secure sum, target
    ``user_epsilon``, updates clipped to ``user_clip``) or ``"user-level"``
    (the user-level layer alone: clients train with plain local SGD,
    :class:`~securefl.federation.local_client.LocalClient`, and the ledger
    has no record-level rows).  With user-level DP, ``client_sample_rate``
    ``q < 1`` draws each round's cohort by Poisson sampling from the OS
    CSPRNG (:mod:`securefl.federation.cohort`); docs/user-level-dp.md.

    Raises:
        ConfigurationError: on out-of-range or inconsistent values (checked
            when the simulation starts, before any training).
    """

    num_clients: int = 10
    rounds: int = 10
    dropout: float = 0.2
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    epsilon_budget: float | None = None
    accountant: AccountantKind = AccountantKind.RDP
    max_grad_norm: float = 1.0
    sample_rate: float = DEFAULT_SAMPLE_RATE
    batch_size: int = 36
    local_epochs: int = 2
    lr: float = 1.0
    weighting: Weighting = Weighting.UNIFORM
    server_optimizer: ServerOptimizerKind = ServerOptimizerKind.FEDAVGM
    server_lr: float | None = None
    server_momentum: float = 0.5
    bits: int = 32
    frac_bits: int | None = None
    clip_range: float = 4.0
    secure: bool = True
    threshold: int | None = None
    alpha: float = 0.5
    hidden: int = 64
    dataset: DatasetName = DatasetName.DIGITS
    seed: int = 0
    insecure_reproducible_noise: bool = False
    privacy: PrivacyLevel = PrivacyLevel.RECORD_LEVEL
    user_epsilon: float = 8.0
    user_clip: float = 1.0
    client_sample_rate: float = 1.0
    security_mode: SecurityMode = SecurityMode.SEMI_HONEST
    graph: GraphKind = GraphKind.COMPLETE
    graph_degree: int | None = None
    roster_delivery: str = "full"

    def __post_init__(self) -> None:
        for name, kind in (("accountant", AccountantKind), ("weighting", Weighting),
                           ("server_optimizer", ServerOptimizerKind), ("dataset", DatasetName),
                           ("privacy", PrivacyLevel), ("security_mode", SecurityMode),
                           ("graph", GraphKind)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                choices = ", ".join(k.value for k in kind)
                raise ConfigurationError(
                    f"{name} must be one of {choices}, got {getattr(self, name)!r}"
                ) from None
        if self.server_lr is None:
            lr = 0.1 if self.server_optimizer is ServerOptimizerKind.FEDADAM else 1.0
            object.__setattr__(self, "server_lr", lr)
        if self.noise_multiplier is None and self.target_epsilon is None:
            object.__setattr__(self, "target_epsilon", DEFAULT_TARGET_EPSILON)
        if self.num_clients < 2:
            raise ConfigurationError(f"need at least 2 clients, got {self.num_clients}")
        if self.rounds < 1:
            raise ConfigurationError(f"need at least 1 round, got {self.rounds}")
        if not 0.0 <= self.dropout <= 1.0:
            raise ConfigurationError(f"dropout probability must be in [0, 1], got {self.dropout}")
        if not self.clip_range > 0:
            raise ConfigurationError(f"clip range must be > 0, got {self.clip_range}")
        if self.privacy is PrivacyLevel.USER_LEVEL:
            given = [name for name in ("noise_multiplier", "epsilon_budget")
                     if getattr(self, name) is not None]
            if given or self.insecure_reproducible_noise:
                raise ConfigurationError(
                    f"privacy user-level: the clients train without DP-SGD, so"
                    f" {', '.join(given) or 'insecure_reproducible_noise'} has nothing to"
                    " act on; drop it, or use privacy both (DP-SGD and user-level DP)")
        if self.privacy.user_level:
            if not self.secure:
                raise ConfigurationError("user-level DP adds its noise inside the secure sum:"
                                         " it needs secure aggregation (drop"
                                         " --no-secure-aggregation)")
            if not (self.user_epsilon > 0 and math.isfinite(self.user_epsilon)):
                raise ConfigurationError(
                    f"the user-level target epsilon must be > 0, got {self.user_epsilon}")
            if self.weighting is not Weighting.UNIFORM:
                raise ConfigurationError(
                    f"weighting {self.weighting.value}: the user-level sum adds clipped"
                    " updates with weight 1 and divides by the expected cohort; use"
                    " --weighting uniform")
            if not self.user_clip > 0:
                raise ConfigurationError(
                    f"the user-level L2 norm bound (user_clip) must be > 0, got"
                    f" {self.user_clip}; it bounds a client's whole update")
        q = self.client_sample_rate
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q <= 1.0:
            raise ConfigurationError(f"the client sampling rate must be in (0, 1], got {q!r}")
        object.__setattr__(self, "client_sample_rate", float(q))
        if q < 1.0:
            if not self.privacy.user_level:
                raise ConfigurationError(
                    f"client_sample_rate={q} (Poisson client sampling) amplifies the"
                    " user-level layer: use privacy both or user-level (record-level runs"
                    " take every client in every round)")
            if self.graph is not GraphKind.COMPLETE or self.threshold is not None:
                raise ConfigurationError(
                    f"client_sample_rate={q}: each round's session runs over the sampled"
                    " cohort with the threshold its size prescribes, over the complete"
                    " graph; drop --threshold and --graph harary")
        self._check_secagg()

    def _check_secagg(self) -> None:
        """Refuse a security mode, graph or threshold no session accepts."""
        sparse = self.graph is GraphKind.HARARY
        if not self.secure and (self.security_mode is SecurityMode.ACTIVE or sparse):
            raise ConfigurationError(
                f"security mode {self.security_mode.value} and graph {self.graph.value} are"
                " settings of secure aggregation; plain summation has no sessions: drop"
                " --no-secure-aggregation (secure=False) or use --mode semi-honest"
                " --graph complete")
        if self.graph_degree is not None:
            k = self.graph_degree
            if not sparse:
                raise ConfigurationError(
                    f"graph_degree={k!r} needs graph harary (the complete graph has degree"
                    " n - 1): add --graph harary or drop --graph-degree")
            if self.num_clients <= 3:
                raise ConfigurationError(
                    f"no Harary graph is sparser than the complete graph for"
                    f" {self.num_clients} clients (an even degree k needs 2 <= k < n - 1):"
                    " use --graph complete and drop --graph-degree")
            if isinstance(k, bool) or not isinstance(k, int) or k < 2 or k % 2 \
                    or k >= self.num_clients - 1:
                raise ConfigurationError(
                    f"graph_degree must be an even int in 2..{self.num_clients - 2} (below"
                    f" n - 1 = {self.num_clients - 1} for {self.num_clients} clients, k/2"
                    f" neighbours on each side of the ring), got {k!r}; for k >= n - 1 use"
                    " graph complete")
        elif sparse and not 0.0 <= self.dropout < 1.0:
            raise ConfigurationError(
                f"graph harary without graph_degree sizes the graph for the dropout rate,"
                f" which must then be below 1, got {self.dropout}; give --graph-degree K")
        if self.roster_delivery not in ROSTER_DELIVERIES:
            raise ConfigurationError(
                f"roster_delivery must be one of {', '.join(ROSTER_DELIVERIES)}, got"
                f" {self.roster_delivery!r}")
        if self.roster_delivery == "merkle" and self.client_sample_rate < 1.0:
            raise ConfigurationError(
                f"roster_delivery merkle needs a sparse graph, but with client_sample_rate="
                f"{self.client_sample_rate:g} each round's session runs over its sampled"
                " cohort on the complete graph, where every client needs every roster entry:"
                " use --roster-delivery full, or --client-sample-rate 1 with --graph harary")
        if self.roster_delivery == "merkle" and not (self.secure and sparse):
            raise ConfigurationError(
                "roster_delivery merkle sends each client only its neighbours' roster"
                " entries, so it needs secure aggregation over a sparse graph: add --graph"
                " harary (graph='harary'), or use --roster-delivery full"
                + (" (drop --no-secure-aggregation)" if not self.secure else ""))
        if self.secure:
            plan = self.secagg_plan()
            # the rules every session will apply (threshold range, threshold vs
            # graph and mode), checked before anything is printed or trained
            SecAggConfig(num_clients=self.num_clients, vector_length=1,
                         threshold=plan.threshold, mode=self.security_mode,
                         graph=plan.graph, roster_delivery=plan.session_roster_delivery(
                             self.num_clients))

    def secagg_plan(self) -> SecAggPlan:
        """The graph and threshold of this federation's sessions.

        The complete graph takes ``threshold`` or the security mode's default
        (:func:`~securefl.protocol.default_threshold`).  A Harary graph with
        ``graph_degree`` k takes ``threshold`` or ``floor((k+1)/2) + 1``, a
        majority of the ``k + 1`` holders of a client's shares (what active
        mode requires, SPEC.md [PARAM-2]); without ``graph_degree`` it takes
        fcp's ``(k, t)`` from :func:`find_graph_parameters` (``threshold``
        overrides ``t``).  Deterministic.

        Raises:
            ConfigurationError: the finder found no sparse graph for these
                clients and this dropout rate (use graph complete, or give
                graph_degree).
        """
        n = self.num_clients
        if self.graph is GraphKind.COMPLETE:
            t = default_threshold(n, self.security_mode) if self.threshold is None \
                else int(self.threshold)
            return SecAggPlan(CompleteGraph(), t, None, "complete graph (Bonawitz et al.)",
                              self.roster_delivery)
        if self.graph_degree is not None:
            k = int(self.graph_degree)
            t = (k + 1) // 2 + 1 if self.threshold is None else int(self.threshold)
            return SecAggPlan(HararyGraph(k), t, k, f"harary:k={k} given",
                              self.roster_delivery)
        model = ServerModel.SEMI_MALICIOUS if self.security_mode is SecurityMode.ACTIVE \
            else ServerModel.SEMI_HONEST
        found = find_graph_parameters(n, self.dropout, 0.0, model)
        if found.complete:
            raise ConfigurationError(
                f"find_graph_parameters found no sparse graph for {n} clients, dropout"
                f" {self.dropout} and a {model.value} server ({found.explanation}); use"
                " --graph complete, or give --graph-degree K")
        t = found.threshold if self.threshold is None else int(self.threshold)
        return SecAggPlan(found.graph, t, found.degree, found.explanation,
                          self.roster_delivery)

    @property
    def record_level(self) -> bool:
        """Whether the clients train with DP-SGD and the ledger has
        record-level rows (privacy record-level or both)."""
        return self.privacy is not PrivacyLevel.USER_LEVEL

    def dp_config(self) -> DPConfig:
        """The clients' DP-SGD configuration (FedSGD: one step at lr 1)."""
        fedsgd = self.server_optimizer is ServerOptimizerKind.FEDSGD
        return DPConfig(
            max_grad_norm=self.max_grad_norm, noise_multiplier=self.noise_multiplier,
            target_epsilon=self.target_epsilon, delta=self.delta,
            planned_rounds=self.rounds, sample_rate=self.sample_rate,
            batch_size=self.batch_size, local_epochs=self.local_epochs,
            max_local_steps=1 if fedsgd else None, lr=1.0 if fedsgd else self.lr,
            accountant=self.accountant, epsilon_budget=self.epsilon_budget,
            insecure_reproducible_noise=self.insecure_reproducible_noise,
        )

    @property
    def adjacency(self) -> Adjacency:
        """The adjacency every epsilon of this federation is stated for."""
        return adjacency_for(self.weighting)

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON-ready values.  ``roster_delivery`` is
        left out when it is ``"full"`` (the default), so that the
        configurations of runs recorded before the option existed compare
        equal on resume."""
        out = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()}
        if out["roster_delivery"] == "full":
            del out["roster_delivery"]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SimulationConfig:
        """The inverse of :meth:`to_json`.

        Raises:
            ConfigurationError: on unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(f"unknown configuration keys {unknown}")
        return cls(**dict(data))


@dataclass
class SimulationResult:
    """The outcome of :func:`run_simulation`.

    Attributes:
        metrics: the content of ``metrics.json``.
        rounds: one report per round.
        model: the final global model.
        output_dir: where the files were written.
        clients: the simulated clients themselves, with their data and
            accountants.  The caller of the simulator plays the whole world,
            not the server: ``metrics``, ``rounds`` and the files hold only
            what the server learns; ``clients`` is everything else.
    """

    metrics: dict[str, Any]
    rounds: list[RoundReport]
    model: torch.nn.Module
    output_dir: Path
    clients: list[PrivateClient] = field(repr=False, default_factory=list)

    @property
    def final_accuracy(self) -> float:
        """Test accuracy of the final global model."""
        return float(self.metrics["final"]["accuracy"])


def load_data(config: SimulationConfig) -> FederatedData:
    """The configured data set, split across the clients.

    Raises:
        ConfigurationError: see :func:`securefl.federation.data.dirichlet_split`.
    """
    if config.dataset is DatasetName.BREAST_CANCER:
        return load_breast_cancer_federated(config.num_clients, alpha=config.alpha,
                                            seed=config.seed)
    return load_digits_federated(config.num_clients, alpha=config.alpha, seed=config.seed)


def preflight(config: SimulationConfig, data: FederatedData | None = None,
              model: torch.nn.Module | None = None) -> tuple[torch.nn.Module, FixedPointCodec]:
    """Check everything that can be checked before training: the data split,
    the model (refused when it has a layer DP-SGD cannot train, see
    :func:`~securefl.privacy.client.make_private_compatible`) and the
    encoding's bit budget (and, with user-level DP, that the ring holds the
    noise, the cohort and the clip).

    Args:
        config: the federation.
        data: the federated data (default: ``config.dataset``).
        model: the initial global model (default: an MLP with
            ``config.hidden`` units, seeded with ``config.seed``); it is not
            modified.

    Returns:
        the initial global model and the codec the federation will use.

    Raises:
        ConfigurationError: on an invalid configuration or an impossible split.
        ModelIncompatibleError: (a ``ConfigurationError``) on a model with a
            layer DP-SGD cannot train (e.g. ``BatchNorm``), naming it and the fix.
        EncodingError: when the sum of the clients' updates could overflow.
    """
    data = data if data is not None else load_data(config)
    config.dp_config()
    if model is None:
        model = make_mlp(data.num_features, data.num_classes, config.hidden, seed=config.seed)
    model = make_private_compatible(model)
    max_weight = max(data.client_sizes) if config.weighting is Weighting.EXAMPLES else 1
    frac_bits = config.frac_bits
    if frac_bits is None:
        frac_bits = min(24, max_frac_bits(bits=config.bits, clip=config.clip_range,
                                          num_clients=config.num_clients))
    codec = FixedPointCodec(
        shapes=tuple(tuple(p.shape) for p in model.parameters()), bits=config.bits,
        frac_bits=frac_bits, clip=config.clip_range, num_clients=config.num_clients,
        max_weight=max_weight,
    )
    # user-level DP: the ring must hold noise, cohort and clip, and the
    # sessions of the cohorts the noise plan
    plan = user_level_plan(config, model)
    if plan is not None:
        user_level_min_cohort(config, plan)
    return model, codec


def dropout_schedule(config: SimulationConfig,
                     mode: SecurityMode = SecurityMode.SEMI_HONEST) -> list[dict[int, Round]]:
    """Per round, client id -> the protocol round it drops at.  Each client
    drops with probability ``config.dropout``, at a round drawn uniformly from
    :class:`Round`; drawn from a generator seeded with ``config.seed`` only,
    so a secure and a plain run see the same schedule.

    A semi-honest session has no ``CONSISTENCY_CHECK`` round: a drop drawn
    there is recorded as what it is in that mode, a drop at ``UNMASKING``
    (the client answers no round after its masked input; the survivors and
    every figure are the same, see :func:`securefl.protocol.secure_sum`)."""
    rng = np.random.default_rng([config.seed, 11])
    rounds = list(Round)
    schedule = []
    for _ in range(config.rounds):
        drops: dict[int, Round] = {}
        for cid in range(1, config.num_clients + 1):
            u = rng.random()
            where = rounds[int(rng.integers(len(rounds)))]
            if mode is not SecurityMode.ACTIVE and where is Round.CONSISTENCY_CHECK:
                where = Round.UNMASKING
            if u < config.dropout:
                drops[cid] = where
        schedule.append(drops)
    return schedule


def _plot_title(config: SimulationConfig, data_name: str) -> str:
    return (f"{data_name}: {config.num_clients} clients, "
            f"{'secure aggregation' if config.secure else 'plain summation'}")


def run_simulation(
    config: SimulationConfig,
    output_dir: str | os.PathLike[str],
    *,
    data: FederatedData | None = None,
    model: torch.nn.Module | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    progress: bool = False,
    resume: bool = False,
    clients: Sequence[PrivateClient] | None = None,
    evaluator: Evaluator | None = None,
    round_json: Callable[[RoundReport], dict[str, Any]] | None = None,
    config_extra: Mapping[str, Any] | None = None,
) -> SimulationResult:
    """Run a whole federation and write its artefacts to ``output_dir``:
    ``run.sqlite`` (the run store, :mod:`securefl.federation.runstore`) and
    its exports ``ledger.jsonl``, ``checkpoint.pt`` and ``metrics.json``,
    and ``accuracy_per_round.png`` (see :class:`RoundRecorder`).

    Sets ``torch.set_num_threads(1)`` (many tiny models train in turn; more
    threads only add contention).

    Args:
        config: the federation.
        output_dir: created if needed; must not hold a ledger or a run store
            already (a ledger is append-only and belongs to one federation),
            unless ``resume``.
        data: a ready-made federated data set (default: ``config.dataset``).
        model: the initial global model (default: an MLP, see :func:`preflight`);
            the federation trains a copy, returned in the result.  On
            resume: the same architecture (its weights are replaced by the
            committed ones).
        on_round: called with every round's report as soon as it is settled.
        progress: show a tqdm progress bar over rounds.
        resume: continue the run in ``output_dir`` (see
            :func:`resume_simulation`); ``config`` must be the run's own.
        clients: the clients, built by the caller (one per shard of
            ``data``, ids 1..n, holding ``model``'s architecture), instead
            of the default :class:`PrivateClient` over each shard
            (:func:`securefl.federate` builds them with your loss, optimizer
            and data); not with ``resume``.
        evaluator: evaluates the global model each round (default: accuracy
            and cross-entropy on ``data.test``; see :class:`RoundRecorder`).
        round_json: a round's ``metrics.json`` entry (default
            :meth:`RoundReport.to_json`).
        config_extra: more (or overriding) entries of ``metrics.json``'s
            config block.

    Raises:
        ConfigurationError: on an invalid configuration (before any training),
            or when ``output_dir`` already holds a ledger or a run (without
            ``resume``).
        ResumeMismatchError: on resume, ``config`` differs from the run's
            (:class:`~securefl.federation.runstore.ResumeMismatchError`,
            naming the keys).
        RunStoreError: on resume, ``output_dir`` holds no run store, or its
            ``ledger.jsonl`` is not a prefix of the store's ledger.
        EncodingError: when the bit budget cannot hold the sum (before any
            training).
    """
    torch.set_num_threads(1)
    out = Path(output_dir)
    if not resume:
        RoundRecorder.check_fresh(out)
    data = data if data is not None else load_data(config)
    if len(data.clients) != config.num_clients:
        raise ConfigurationError(
            f"the data set has {len(data.clients)} client shards, the configuration"
            f" {config.num_clients} clients"
        )
    dp = config.dp_config()
    # the caller's model is never changed: the federation trains a copy
    model, codec = preflight(config, data, copy.deepcopy(model) if model is not None else None)
    user_plan = user_level_plan(config, model)  # refuses a ring too small before any training
    min_cohort = user_level_min_cohort(config, user_plan) if user_plan is not None else 0
    ids = tuple(range(1, config.num_clients + 1))
    mode = AggregationMode.SECURE if config.secure else AggregationMode.PLAIN
    plan = config.secagg_plan() if config.secure else None
    server = Server(
        model, codec,
        ServerOptimizerConfig(kind=config.server_optimizer, lr=config.server_lr,
                              momentum=config.server_momentum),
        ids, mode=mode, threshold=plan.threshold if plan is not None else config.threshold,
        name=f"securefl simulate seed {config.seed}", security_mode=config.security_mode,
        graph=plan.graph if plan is not None else None,
        roster_delivery=plan.roster_delivery if plan is not None else "full",
    )
    # the degree the sessions use (the parameter finder's when graph_degree is None)
    config_extra = {"graph_degree_used": plan.degree if plan is not None else None,
                    **dict(config_extra or {})}
    if clients is not None:
        if resume or tuple(c.client_id for c in clients) != ids:
            raise ConfigurationError(f"clients must be given with ids {ids}, without resume")
        clients = list(clients)
    elif not config.record_level:
        # user-level DP alone: plain local SGD, no per-example clipping or noise
        fedsgd = config.server_optimizer is ServerOptimizerKind.FEDSGD
        clients = [
            LocalClient(cid, model, x, y, batch_size=config.batch_size,  # type: ignore[misc]
                        local_epochs=config.local_epochs, lr=1.0 if fedsgd else config.lr,
                        max_steps=1 if fedsgd else None)
            for cid, (x, y) in zip(ids, data.clients, strict=True)]
    else:
        clients = [
            # The seed reaches a client's randomness only in the insecure
            # reproducible mode; otherwise it is ignored (os.urandom).
            PrivateClient(cid, model, x, y, dp, seed=config.seed,
                          weighting=config.weighting)
            for cid, (x, y) in zip(ids, data.clients, strict=True)
        ]
    # drops at R3 (consistency check) exist only in active sessions
    schedule = dropout_schedule(config, SecurityMode.ACTIVE) \
        if config.secure and config.security_mode is SecurityMode.ACTIVE \
        else dropout_schedule(config)
    title = _plot_title(config, data.name)
    if resume:
        recorder = RoundRecorder.resume(out, config=config, server=server, test=data.test,
                                        secure=config.secure, plot_title=title)
    else:
        recorder = RoundRecorder.create(out, config=config, server=server, data_name=data.name,
                                        test=data.test, secure=config.secure, plot_title=title,
                                        driver_state={"schedule_position": 0},
                                        evaluator=evaluator, round_json=round_json,
                                        config_extra=config_extra)
    try:
        by_id = {c.client_id: c for c in clients}
        flight = recorder.in_flight_state or {}
        sampled = set(flight.get("cohort", by_id))  # who the interrupted round sampled
        interrupted = recorder.settle_interrupted(
            others=Participation.REFUSED_BUDGET,
            detail="refused (budget guard) in the interrupted round",
            idle=lambda cid: (getattr(by_id[cid], "noise_multiplier", 0.0),
                              getattr(by_id[cid], "sample_rate", 0.0), 0),
            status_of=lambda cid: (
                None if config.record_level else (
                    Participation.ROUND_ABORTED,
                    "sampled in the interrupted round (it may have trained)"))
            if cid in sampled else (
                Participation.NOT_SAMPLED,
                "not sampled in the interrupted round (Poisson client sampling)"))
        # every client's accountant continues from its committed history
        for client in clients:
            if isinstance(client, LocalClient):
                continue  # no record-level accountant
            history = recorder.client_states.get(client.client_id, {}).get("history", [])
            client.accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
        if interrupted is not None and on_round is not None:
            on_round(interrupted)
        _run_rounds(config, recorder, server, clients, schedule, codec, mode,
                    on_round=on_round, progress=progress, user_plan=user_plan,
                    min_cohort=min_cohort)
        summaries = {
            client.client_id: {"noise_multiplier": client.noise_multiplier,
                               "sample_rate": client.sample_rate,
                               "steps_per_round": client.steps_per_round,
                               "epsilon_budget": dp.epsilon_budget}
            for client in clients if config.record_level}
        metrics = recorder.finish(summaries)
    finally:
        recorder.close()
    return SimulationResult(metrics=metrics, rounds=list(recorder.reports), model=model,
                            output_dir=out, clients=clients)


def _session_threshold(config: SimulationConfig, cohort_size: int) -> int:
    """The threshold of a round's user-level session over ``cohort_size``
    sampled clients: the federation's (``secagg_plan``) without sampling,
    the mode's default for the cohort's size with it."""
    if config.client_sample_rate == 1.0:
        return config.secagg_plan().threshold
    return cohort_threshold(cohort_size, config.security_mode)


def user_level_plan(config: SimulationConfig,
                    model: torch.nn.Module) -> UserLevelPlan | None:
    """The user-level plan of a federation (None without user-level DP):
    each client takes part in a round with probability
    ``config.client_sample_rate`` (``q``; 1: every client in every round),
    the ring is ``config.bits`` wide and sized for
    :func:`~securefl.federation.cohort.cohort_bound` clients (``n`` when
    ``q = 1``), the target is ``config.user_epsilon`` over ``config.rounds``
    rounds at sampling rate ``q``.  Semi-honest sessions use a noise plan
    calibrated to the threshold ``t`` (removable excess needs active mode,
    SPEC [NZ-1b]): the released variance is between ``V`` and ``V m / t``
    for a session of ``m`` clients, and the ring is sized for the largest
    ``m / t`` a cohort can have.  Active sessions use the removable plan
    (default tolerance ``1e-3``): the released variance is between ``V`` and
    ``1.001 V`` whoever drops, and the ring is sized for that.

    Raises:
        ConfigurationError: when the ring is too small or a value is out of
            range (the message names the fix).
    """
    if not config.privacy.user_level:
        return None
    size = sum(int(p.numel()) for p in model.parameters())
    q = config.client_sample_rate
    bound = cohort_bound(config.num_clients, q)
    if config.security_mode is SecurityMode.ACTIVE:
        factor = 1.0 + NoisePlan(1.0).tolerance
    else:
        sizes = [config.num_clients] if q == 1.0 else range(MIN_COHORT, max(bound, 2) + 1)
        factor = max(m / _session_threshold(config, m) for m in sizes)
    # the ledger charges every round with the skip-aware bound of the pool n
    # and the skip threshold k (rounds with fewer than k sampled clients are
    # skipped), so the variance is calibrated with it; k depends on the
    # variance (user_level_min_cohort), so iterate to the plan whose k is
    # the one it was calibrated for
    skip_below = 0
    for _ in range(8):
        plan = plan_user_level(num_values=size, clip=config.user_clip, bits=config.bits,
                               cohort=bound, q=q, rounds=config.rounds,
                               target_epsilon=config.user_epsilon, delta=config.delta,
                               noise_factor=factor, pool=config.num_clients,
                               skip_below=skip_below)
        k = user_level_min_cohort(config, plan)
        if k == skip_below:
            return plan
        skip_below = k
    raise ConfigurationError(
        f"the user-level plan does not settle on a skip threshold (last {skip_below}):"
        " use a larger user epsilon, more clients or a larger client sampling rate")


def user_level_min_cohort(config: SimulationConfig, plan: UserLevelPlan) -> int:
    """The fewest sampled clients a round's user-level session takes: the
    smallest cohort size from :data:`~securefl.federation.cohort.MIN_COHORT`
    up whose session accepts the noise plan (a small cohort's clients each
    add a large share of the noise, which the samplers may not reach; the
    ring must hold the released noise).  A round whose cohort is smaller is
    skipped before anyone trains (the decision depends on the cohort's size
    alone, never on data).  Without sampling the cohort is every client.

    Raises:
        ConfigurationError: no cohort the ring was sized for (at most
            :func:`~securefl.federation.cohort.cohort_bound`) takes the noise
            plan (the message gives the session's reason).
    """
    q = config.client_sample_rate
    bound = cohort_bound(config.num_clients, q)
    sizes = [config.num_clients] if q == 1.0 else range(MIN_COHORT, max(bound, 2) + 1)
    reason = ""
    for m in sizes:
        try:
            secagg = config.secagg_plan()
            SecAggConfig(num_clients=m, vector_length=plan.codec.padded, bits=plan.codec.bits,
                         threshold=_session_threshold(config, m), mode=config.security_mode,
                         graph=secagg.graph, noise=_user_level_noise(config, plan.variance),
                         roster_delivery=secagg.session_roster_delivery(m))
        except ConfigurationError as exc:
            reason = str(exc)
            continue
        return int(m)
    raise ConfigurationError(
        f"no session of at most {bound} clients takes the user-level noise (variance"
        f" {plan.variance:.6g} in Z_2^{plan.codec.bits}): {reason}; use fewer bits, a larger"
        " user epsilon, more clients or a larger client sampling rate (USER_LEVEL_DEFAULTS,"
        " securefl simulate's default with user-level DP, fits: 300 clients, client sampling"
        " rate 0.3, Z_2^16, 20 rounds)")


def _user_level_noise(config: SimulationConfig, variance: float) -> NoisePlan:
    """The sessions' noise plan: removable excess in active mode ([NZ-1b]),
    calibrated to the threshold otherwise."""
    if config.security_mode is SecurityMode.ACTIVE:
        return NoisePlan(variance)
    return NoisePlan.calibrate_to_threshold(variance)


def _user_level_sum(config: SimulationConfig, server: Server, plan: UserLevelPlan,
                    vectors: Mapping[int, np.ndarray], drops: Mapping[int, Round],
                    round_seed: bytes, cohort_size: int) -> tuple[AggregateOutcome, float]:
    """Securely sum the rotated vectors of the round's cohort (each session
    adds its Skellam noise of the protocol's noise plan; the threshold is
    the one of ``cohort_size`` sampled clients), decode, and divide by the
    expected cohort ``q n`` (a public constant).  Returns the outcome and
    the variance the server session reports as released.

    Raises:
        AbortError: fewer than the threshold encoded updates, or survivors.
    """
    ids = tuple(sorted(vectors))
    threshold = _session_threshold(config, cohort_size)
    if len(ids) < MIN_COHORT or len(ids) < threshold:
        raise AbortError(f"{len(ids)} encoded updates, fewer than the threshold"
                         f" {threshold}", needed=max(threshold, MIN_COHORT),
                         available=len(ids))
    degree = getattr(server.graph, "degree", None)
    if degree is not None and len(ids) <= degree:
        raise AbortError(f"{len(ids)} encoded updates, too few for the Harary graph of degree"
                         f" {degree} (it needs more than k clients)",
                         needed=degree + 1, available=len(ids))
    try:
        secagg = SecAggConfig(num_clients=len(ids), vector_length=plan.codec.padded,
                              bits=plan.codec.bits, threshold=threshold, client_ids=ids,
                              mode=server.security_mode, graph=server.graph,
                              noise=_user_level_noise(config, plan.variance),
                              roster_delivery=server.roster_delivery_for(len(ids)))
    except ConfigurationError as exc:
        # fewer encoded updates than sampled can leave a session the noise
        # plan does not fit (checked for whole cohorts before training): the
        # round aborts, its charges kept, rather than release a wrong sum
        raise AbortError(f"no session of the {len(ids)} encoded updates takes the noise"
                         f" plan: {exc}", needed=len(ids), available=len(ids)) from None
    server.last_session = secagg  # the round report says which roster delivery it used
    result = secure_sum(dict(vectors), secagg, {c: r for c, r in drops.items() if c in ids})
    expected = config.client_sample_rate * config.num_clients
    flat = plan.codec.decode_sum(result.total, round_seed) / expected
    average, offset = [], 0
    for param in server.model.parameters():
        size = int(param.numel())
        average.append(flat[offset:offset + size].reshape(tuple(param.shape)))
        offset += size
    assert result.noise_variance is not None
    return (AggregateOutcome(average=average, survivors=result.survivors,
                             weight_total=len(result.survivors)), result.noise_variance)


def _run_rounds(config: SimulationConfig, recorder: RoundRecorder, server: Server,
                clients: list[PrivateClient], schedule: list[dict[int, Round]],
                codec: FixedPointCodec, mode: AggregationMode, *,
                on_round: Callable[[RoundReport], None] | None, progress: bool,
                user_plan: UserLevelPlan | None = None, min_cohort: int = 0) -> None:
    """The rounds still to run: one per entry of the dropout schedule after
    the committed position (a round interrupted by a crash re-runs its
    schedule entry under the next round number).  With user-level DP, a
    round whose sampled cohort is below ``min_cohort``
    (:func:`user_level_min_cohort`) is skipped before anyone trains."""
    position = int(recorder.driver_state.get("schedule_position", 0))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.rounds, initial=position, desc="rounds", unit="round",
                   leave=False, dynamic_ncols=True)
    while position < config.rounds:
        round_number = recorder.next_round
        t0 = time.perf_counter()
        global_params = server.global_parameters()
        drops = schedule[position]
        updates: dict[int, EncodedUpdate | PlainUpdate | None] = {}
        info: dict[int, dict[str, Any]] = {}
        admitted: list[tuple[Any, Admission | None]] = []
        vectors: dict[int, np.ndarray] = {}
        round_seed = os.urandom(32)  # the public seed of this round's rotation
        # Poisson client sampling from the OS CSPRNG, never from the run seed
        # (q = 1: everyone); a client left out neither trains nor spends
        cohort = set(poisson_cohort([c.client_id for c in clients], config.client_sample_rate))
        skipped = ""
        if user_plan is not None and len(cohort) < min_cohort:
            skipped = (f"skipped: {len(cohort)} client(s) sampled, fewer than a user-level"
                       f" session takes ({min_cohort}); nobody trained, nothing was released;"
                       " the round is charged at user level (whether a round is skipped"
                       " depends on who was sampled)")
        for client in clients:
            cid = client.client_id
            if cid not in cohort or skipped:
                updates[cid] = None
                info[cid] = {"status": Participation.ROUND_ABORTED, "detail": skipped,
                             "steps": 0} if cid in cohort else {
                    "status": Participation.NOT_SAMPLED, "steps": 0,
                    "detail": f"not sampled (Poisson client sampling,"
                              f" q={config.client_sample_rate:g})"}
                continue
            if not config.record_level:
                admitted.append((client, None))  # no record-level budget: it trains
                continue
            try:
                admitted.append((client, admit(client)))
            except PrivacyBudgetExceededError as exc:
                updates[cid] = None
                info[cid] = {"status": Participation.REFUSED_BUDGET, "detail": str(exc),
                             "steps": 0}
        previous_user, user_charge, user_refusal = None, None, ""
        user_rows: list[UserLevelEntry] = []
        if user_plan is not None and (admitted or skipped):
            effective = parse_ledger(recorder.store.ledger_bytes()).effective_user_level()
            previous_user = effective[-1] if effective else None
            # the round's user-level charge at its target variance: the least
            # noise its sum can carry, so the largest epsilon it can cost
            user_charge = replace(user_level_entry(
                user_plan, round_number=round_number, released_variance=user_plan.variance,
                survivors=0, previous=previous_user, epsilon_budget=config.user_epsilon),
                status="in-flight")
            if not user_charge.epsilon <= config.user_epsilon:
                # the user-level budget guard: earlier charges (an aborted,
                # interrupted or skipped round keeps its charge) leave no room
                # for this round's charge (the same whether it releases or is
                # skipped); nobody trains, nothing is released or charged
                user_refusal = (f"refused (user-level budget): releasing round {round_number}"
                                f" would raise the user-level epsilon to"
                                f" {user_charge.epsilon:.4f} > {config.user_epsilon:g}")
                for client, _ in admitted:
                    updates[client.client_id] = None
                    info[client.client_id] = {"status": Participation.REFUSED_BUDGET,
                                              "detail": user_refusal, "steps": 0}
                if skipped:
                    for cid in cohort:
                        info[cid] = {"status": Participation.REFUSED_BUDGET,
                                     "detail": user_refusal, "steps": 0}
                    skipped = ""
                admitted, user_charge = [], None
            elif skipped:
                # a skipped round: nothing in flight (nobody trains); its
                # settled block carries the charge (status skipped)
                user_rows.append(user_level_entry(
                    user_plan, round_number=round_number, released_variance=user_plan.variance,
                    survivors=0, previous=previous_user, epsilon_budget=config.user_epsilon,
                    skipped=True))
                user_charge = None
        # the spend is durable before any data is touched: in-flight rows,
        # charging the steps each client is about to take, and the round's
        # user-level charge, committed
        recorder.begin(round_number, {
            client.client_id: (admission.planned[0],
                               admission.charged_history(client.history))
            for client, admission in admitted if admission is not None}, user_level=user_charge,
            in_flight_state={"cohort": sorted(cohort)})
        crash_point("after-in-flight", round_number)
        for client, admission in admitted:
            cid = client.client_id
            raw: list[np.ndarray] | None = None
            if admission is None:
                # user-level DP alone: plain local training, no per-example DP;
                # the user-level layer below protects the whole update
                result = client.train_round(global_params)
                crash_point("mid-training", round_number)
                info[cid] = {"status": None, "detail": "", "steps": result.steps}
                raw = result.update
            else:
                # the one client-update path (the Flower ClientApp's too):
                # train, then encode with the client's own secret rounding;
                # only the encoded vector leaves it
                update = client_update(client, global_params, codec, round_number, mode,
                                       admission=admission)
                crash_point("mid-training", round_number)
                updates[cid] = update.encoded
                info[cid] = {"status": update.refusal, "detail": update.detail,
                             "steps": update.steps}
                if update.encoded is not None and update.result is not None:
                    raw = update.result.update
            if user_plan is not None and raw is not None:
                # user-level DP: the client clips, rotates and rounds its whole
                # update (its own secret rounding); its session adds the noise
                flat = np.concatenate([np.asarray(t, dtype=np.float64).reshape(-1)
                                       for t in raw])
                try:
                    vectors[cid] = user_plan.codec.encode(flat, round_seed).vector
                except EncodingError as exc:
                    updates[cid] = None
                    info[cid].update(status=Participation.ENCODING_ERROR,
                                     detail=f"encoding refused: {exc}")

        abort_reason = ""
        server.last_session = None
        try:
            if skipped or user_refusal:
                raise AbortError(skipped or user_refusal)
            if user_plan is not None:
                outcome, released = _user_level_sum(config, server, user_plan, vectors, drops,
                                                    round_seed, len(cohort))
                crash_point("after-release", round_number)
                user_rows.append(user_level_entry(
                    user_plan, round_number=round_number, released_variance=released,
                    survivors=len(outcome.survivors), previous=previous_user,
                    epsilon_budget=config.user_epsilon))
            else:
                outcome = server.aggregate(round_number, updates, drops)
        except AbortError as exc:
            outcome = None
            abort_reason = skipped or user_refusal or str(exc)
        sent = set(vectors) if user_plan is not None else {
            cid for cid, update in updates.items() if update is not None}
        outcomes = [
            ClientOutcome(client.client_id,
                          (getattr(client, "noise_multiplier", 0.0),
                           getattr(client, "sample_rate", 0.0),
                           info[client.client_id]["steps"]),
                          client.history, status=info[client.client_id]["status"],
                          dropped_at=drops.get(client.client_id)
                          if client.client_id in sent else None,
                          detail=info[client.client_id]["detail"])
            for client in clients]
        position += 1
        # a federation that asked for merkle rosters: which one this round's
        # session used (full when its graph was not sparse for its roster)
        session = server.last_session
        delivery = session.roster_delivery if session is not None \
            and server.roster_delivery != "full" else None
        report = recorder.settle(round_number, outcome, outcomes, abort_reason=abort_reason,
                                 started=t0, driver_state={"schedule_position": position},
                                 user_level=user_rows, roster_delivery=delivery)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(acc=f"{report.accuracy:.3f}", eps=f"{report.epsilon_max:.2f}")
        if on_round is not None:
            on_round(report)
    if bar is not None:
        bar.close()


def resume_simulation(
    output_dir: str | os.PathLike[str],
    *,
    data: FederatedData | None = None,
    model: torch.nn.Module | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    progress: bool = False,
) -> SimulationResult:
    """Continue the run in ``output_dir`` from its last committed round,
    with the configuration recorded in its run store: the global model, the
    server optimizer state, every client's accountant history (so its
    budget guard and epsilon continue: they never reset), the position in
    the dropout schedule and the ledger are restored; a round found in flight
    is settled as aborted (its charge kept) and re-run under the next round
    number; rounds committed before the crash are not repeated.  DP noise,
    sampling and rounding are fresh (``os.urandom``), as in any round.

    Args:
        output_dir: a run directory written by :func:`run_simulation`.
        data: the run's federated data (default: its ``config.dataset``).
        model: the run's model architecture (default: its MLP); the
            committed weights replace its own.
        on_round: called with every round's report as soon as it is
            settled (the interrupted round's too).
        progress: show a tqdm progress bar over rounds.

    Raises:
        RunStoreError: when ``output_dir`` holds no run store.
        ConfigurationError: see :func:`run_simulation`.
    """
    config = SimulationConfig.from_json(RoundRecorder.stored_config(output_dir))
    return run_simulation(config, output_dir, data=data, model=model, on_round=on_round,
                          progress=progress, resume=True)
