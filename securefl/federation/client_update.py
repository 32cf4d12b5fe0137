"""One client's contribution to one round, written once: the budget guard,
the durable charge, DP-SGD training and the encoding of the update.

The simulator (:func:`~securefl.federation.simulation.run_simulation`) and the
Flower ClientApp (:func:`~securefl.flower.client_train.train_private_client`)
both call :func:`client_update`; no other federation runner trains a
:class:`~securefl.privacy.client.PrivateClient` for a round or encodes its
update (the empirical audit, :mod:`securefl.privacy.empirical`, trains one
white-box, outside any federation, and encodes nothing).  In order:

1. **guard**: :func:`admit` checks that one more round keeps the client within
   its budget under every accountant of its adjacency
   (:meth:`PrivateClient.check_budget`); a refusal trains nothing and spends
   nothing;
2. **charge**: the caller's ``charge`` callback records the spend (the
   history rows the round adds) durably *before* any private record is
   touched: the simulator's in-flight ledger rows, a Flower node's on-disk
   accountant (:mod:`securefl.flower.dpstate`);
3. **train**: one round of DP-SGD from the global parameters (the client's
   accountant records the steps);
4. **encode**: secure aggregation encodes the update into ``Z_{2^k}``,
   rounding stochastically with
   :func:`~securefl.privacy.rounding.rounding_randomness` (the OS CSPRNG,
   never a seed the server or the run configuration knows); plain summation
   clips and scales it.  A weight (the record count under weighting by
   examples) above the codec's ``max_weight`` is clamped to it, never
   refused: the refusal would tell the server that the count exceeds it.
   An update the encoder refuses (NaN, a wrong shape) is a typed refusal,
   and its steps stay spent.  An encoding refusal never depends on one
   (finite) record: an example whose gradient is NaN or infinite is zeroed
   before clipping (:class:`~securefl.privacy.client.PrivateClient`), so a
   NaN update can only come from the global weights or from the optimizer's
   post-processing of the noised gradients.

Only the encoded update (and public DP parameters) may leave the client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from securefl.encoding import EncodedUpdate, FixedPointCodec, PlainUpdate
from securefl.errors import ConfigurationError, EncodingError, PrivacyBudgetExceededError
from securefl.federation.server import AggregationMode
from securefl.privacy.accounting import HistoryRow
from securefl.privacy.budget import compose
from securefl.privacy.client import LocalResult, PrivateClient
from securefl.privacy.ledger import Participation

__all__ = ["Admission", "ClientUpdate", "admit", "client_update"]


@dataclass(frozen=True)
class Admission:
    """The budget guard let a client train one more round.

    Attributes:
        client_id: the client admitted.
        planned: the history rows the round adds (what to charge).
        history: the client's accountant history when admitted: an admission
            is valid only for that history (a client that trained since must
            be admitted again).  The history itself, not its number of rows:
            Opacus merges the steps of consecutive rounds at the same noise
            multiplier and sample rate into one row, so a count of rows
            stays 1 round after round and would accept a stale admission.
        epsilon_after: the epsilon after the round by the guard's accountants
            (None without a budget).
    """

    client_id: int
    planned: tuple[HistoryRow, ...]
    history: tuple[HistoryRow, ...]
    epsilon_after: float | None

    @property
    def history_rows(self) -> int:
        """How many rows :attr:`history` has."""
        return len(self.history)

    def charged_history(self, history: Sequence[HistoryRow]) -> list[HistoryRow]:
        """``history`` with the planned rows composed onto it (what the client
        will have spent once it trained)."""
        return compose(list(history), list(self.planned))


def admit(client: PrivateClient) -> Admission:
    """Run the budget guard for one more round of ``client``.

    Raises:
        PrivacyBudgetExceededError: the round would take the client past its
            budget under one of the accountants of its adjacency.
    """
    epsilon_after = client.check_budget()
    return Admission(client_id=client.client_id, planned=tuple(client.planned_round()),
                     history=_frozen(client.history), epsilon_after=epsilon_after)


def _frozen(history: Sequence[Sequence[float]]) -> tuple[HistoryRow, ...]:
    """A history as a tuple of ``(sigma, q, steps)`` tuples (comparable)."""
    return tuple((float(r[0]), float(r[1]), int(r[2])) for r in history)


@dataclass(frozen=True)
class ClientUpdate:
    """What one client produced in one round.

    Attributes:
        client_id, round_number: whose update, for which round.
        encoded: the encoded update (:class:`EncodedUpdate` in secure mode,
            :class:`PlainUpdate` in plain mode); None when refused.
        refusal: None, or why there is no update:
            :attr:`Participation.REFUSED_BUDGET` (the guard refused: nothing
            trained, nothing spent) or :attr:`Participation.ENCODING_ERROR`
            (trained and spent, but the encoder refused the update).
        error: the typed refusal (:class:`PrivacyBudgetExceededError` or
            :class:`EncodingError`), None otherwise.
        steps: DP-SGD steps spent this round (0 when the guard refused).
        result: the training result (None when the guard refused); its
            ``update`` is local minus global and must not leave the client.
    """

    client_id: int
    round_number: int
    encoded: EncodedUpdate | PlainUpdate | None
    refusal: Participation | None
    error: PrivacyBudgetExceededError | EncodingError | None
    steps: int
    result: LocalResult | None

    @property
    def detail(self) -> str:
        """Why there is no update ("" when there is one)."""
        if isinstance(self.error, EncodingError):
            return f"encoding refused: {self.error}"
        return "" if self.error is None else str(self.error)


def client_update(client: PrivateClient, global_params: Sequence[torch.Tensor],
                  codec: FixedPointCodec, round_number: int, mode: AggregationMode, *,
                  admission: Admission | None = None,
                  charge: Callable[[Admission], None] | None = None) -> ClientUpdate:
    """One round of ``client``: guard, charge, train, encode (see the module
    docstring).

    Args:
        client: the DP client (its accountant continues from earlier rounds).
        global_params: the global model's parameters, in model order.
        codec: the federation's fixed-point codec.
        round_number: the federation round (selects only the INSECURE seeded
            rounding stream; the default rounding ignores it).
        mode: secure aggregation (encode into the ring) or plain summation.
        admission: the guard's admission when the caller already ran
            :func:`admit` (the simulator admits every client before it
            charges them all in one ledger block); None: admit here.
        charge: called with the admission after the guard and before
            training; it must make the spend durable before returning.
            Whatever it raises propagates and nothing is trained.

    Returns:
        the :class:`ClientUpdate`: an encoded update, or a typed refusal.

    Raises:
        ConfigurationError: ``admission`` belongs to another client or to an
            older history (one with fewer steps: it trained since), or
            ``global_params`` does not match the model.
    """
    if admission is None:
        try:
            admission = admit(client)
        except PrivacyBudgetExceededError as exc:
            return ClientUpdate(client_id=client.client_id, round_number=int(round_number),
                                encoded=None, refusal=Participation.REFUSED_BUDGET, error=exc,
                                steps=0, result=None)
    elif (admission.client_id != client.client_id
          or admission.history != _frozen(client.history)):
        raise ConfigurationError(f"client {client.client_id}: the admission is for client"
                                 f" {admission.client_id} with history"
                                 f" {list(admission.history)}, not this client's"
                                 f" {client.history} (admit it again after it trains)")
    if charge is not None:
        charge(admission)
    result = client.train_round(global_params)
    weight = codec.clamp_weight(result.weight)
    try:
        encoded: EncodedUpdate | PlainUpdate
        if AggregationMode(mode) is AggregationMode.SECURE:
            encoded = codec.encode(result.update,
                                   client.rounding(round_number, codec.num_values),  # type: ignore[arg-type]
                                   weight=weight)
        else:
            encoded = codec.encode_plain(result.update, weight=weight)
    except EncodingError as exc:
        return ClientUpdate(client_id=client.client_id, round_number=int(round_number),
                            encoded=None, refusal=Participation.ENCODING_ERROR, error=exc,
                            steps=result.steps, result=result)
    return ClientUpdate(client_id=client.client_id, round_number=int(round_number),
                        encoded=encoded, refusal=None, error=None, steps=result.steps,
                        result=result)
