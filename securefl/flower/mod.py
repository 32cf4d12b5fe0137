"""The client side: a Flower mod that runs securefl's secure aggregation
around a ClientApp's ``train`` function, the drop-in replacement for
Flower's ``secaggplus_mod``.

Every securefl message is a Flower ``train`` message whose content holds a
ConfigRecord named :data:`~securefl.flower.setup.RECORD` with the stage, and
the protocol message as bytes in the v1 wire encoding (:mod:`securefl.wire`).
A ``train`` message without that record is refused (an error reply, rule
``malformed-message``) and never reaches the ClientApp: its ``train`` would
answer it with the local model in clear.  "``train``" is the category, with
or without an action: Flower routes ``"train.default"`` to the same
``@app.train()`` function as ``"train"``, and ``"train.<action>"`` to
``@app.train("<action>")`` (:func:`is_train_message`).  Messages of other
categories (``evaluate``, ``query``) pass through to the ClientApp
untouched; what their replies reveal is the ClientApp's own (the example
app answers ``train`` only).

At the masked-input stage (once per session: a repeated masked-input
message is refused before ``train`` runs) the mod calls the ClientApp's
``train`` function (``call_next``) with the message (it carries the global model as an
ArrayRecord and the train config) plus the ConfigRecord
:data:`ENCODE_RECORD` holding the public session setup.  A securefl
``train`` (:func:`~securefl.flower.client_train.train_private_client`)
encodes its own update through
:func:`~securefl.federation.client_update.client_update`, the path the
simulator runs, and returns it as the ArrayRecord :data:`ENCODED_RECORD`
(one uint64 vector, checked here for length and range).  Any other ``train``
returns its local model (one ArrayRecord, same order as the global one) and
may return the ``num-examples`` metric (the weight, which enters the secure
sum; only with the node's consent, node config
``securefl-allow-weighting-examples``, and clamped to the codec's
``max_weight``), and the mod encodes ``local - global`` with the session's
fixed-point codec.
Either way the rounding is stochastic with randomness from the node's OS
CSPRNG (:func:`~securefl.privacy.rounding.rounding_randomness`), and only the
masked vector is sent.  Metrics whose names
start with ``dp-`` (the DP-SGD accounting parameters the privacy ledger
needs) are forwarded in clear; nothing else of the train reply leaves the
node: no example count, no loss, no count of clipped values.

The node's policy
-----------------
Before it generates a key, the node checks the announced setup against its
own :class:`~securefl.flower.policy.NodePolicy`, read from its node config
(never from the server's run config), and refuses weaker setups, runs
asking for reproducible DP noise, and runs whose DP parameters exceed the
node's own limits (:class:`~securefl.flower.policy.NodeDPLimits`) with a
:class:`~securefl.flower.policy.SetupRefusedError`; the server gets a reply
whose ``securefl`` record holds only ``refused`` (the rule) and ``reason``.

Session state across ClientApp processes
----------------------------------------
Flower 1.4x starts a fresh ClientApp process for every message, so nothing
survives in memory between protocol rounds; only the node's ``Context``
(kept by the SuperNode for the run) does.  Instead of serialising the
session's secret keys and shares, the mod stores the 32-byte secret seed of
the session's randomness (``DeterministicRandom``, AES-256-CTR), the session
setup and the server messages received so far, and rebuilds the session in
every process by replaying them: the replay draws the same keys and shares,
so it answers exactly as before.  The seed is as secret as the keys it
derives.  It lives in the SuperNode's memory and on its local ClientAppIo
channel only, and is deleted from the Context as soon as the session is
finished or aborted (by this node, or by the server's ``abort`` message), or
a new session starts.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from securefl.encoding import FixedPointCodec
from securefl.errors import (
    ConfigurationError,
    DataValidationError,
    EncodingError,
    LocalProtocolError,
    PrivacyBudgetExceededError,
    ProtocolError,
    RemoteProtocolError,
    Rule,
    SecureFLError,
    WireFormatError,
)
from securefl.flower.keys import load_identity_key, load_pinned_keys
from securefl.flower.policy import (
    ALLOW_WEIGHTING_EXAMPLES_CONFIG,
    DPLimitRefusedError,
    DPLimitRule,
    NodeDPLimits,
    NodePolicy,
    SetupRefusedError,
    check_no_insecure_noise,
)
from securefl.flower.setup import (
    DP_METRIC_PREFIX,
    DP_METRICS_RECORD,
    RECORD,
    STATE_RECORD,
    Key,
    SessionSetup,
    Stage,
    parse_graph,
)
from securefl.hazmat import signing
from securefl.hazmat.randomness import DeterministicRandom
from securefl.privacy.rounding import rounding_randomness
from securefl.protocol.client import ClientSession, ClientState
from securefl.protocol.config import SecurityMode
from securefl.protocol.messages import (
    ConsistencyRequest,
    KeyRoster,
    ShareDelivery,
    SparseKeyRoster,
    UnmaskingRequest,
)
from securefl.wire import codec as wire

__all__ = [
    "ENCODED_RECORD",
    "ENCODE_RECORD",
    "IDENTITY_KEY_CONFIG",
    "NODE_RECORD",
    "PINNED_KEYS_CONFIG",
    "is_train_message",
    "node_client_id",
    "node_policy",
    "public_reason",
    "securefl_mod",
]

CLIENT_ID_CONFIG = "securefl-client-id"
"""Node config key: this node's protocol client id (default partition-id + 1)."""
IDENTITY_KEY_CONFIG = "securefl-identity-key"
"""Node config key (active mode): path of this node's private identity key."""
PINNED_KEYS_CONFIG = "securefl-pinned-keys"
"""Node config key (active mode): path of the pinned ``pinned.json``."""
NUM_EXAMPLES = "num-examples"
ENCODE_RECORD = "securefl.encode"
"""ConfigRecord the mod adds to the masked-input message before it calls
``train``: ``setup`` holds the session setup (public: the codec and the
federation round), so that a securefl ``train`` function encodes its own
update (:func:`~securefl.federation.client_update.client_update`)."""
NODE_RECORD = "securefl.node"
"""Context state record (the SuperNode's memory, lost when it dies): the
first federation round this SuperNode process saw a session setup in
(``first-round``, set by the mod) and how many charges the node's on-disk
accountant held after this process last wrote it (``charges``); the witness
:mod:`securefl.flower.dpstate` checks the disk against."""
ENCODED_RECORD = "securefl.encoded"
"""ArrayRecord a securefl ``train`` function returns: one uint64 array, its
encoded update (the mod masks it as it is)."""

log = logging.getLogger(__name__)

_EXPECTED = {
    Stage.SHARE_KEYS: KeyRoster,
    Stage.MASKED_INPUT_COLLECTION: ShareDelivery,
    Stage.CONSISTENCY_CHECK: ConsistencyRequest,
    Stage.UNMASKING: UnmaskingRequest,
}


def node_client_id(context: Context) -> int:
    """This node's protocol client id: node config ``securefl-client-id``,
    else ``partition-id + 1``.

    Raises:
        ConfigurationError: neither is set, or the value is not a positive int.
    """
    config = context.node_config
    if CLIENT_ID_CONFIG in config:
        value, offset = config[CLIENT_ID_CONFIG], 0
    elif "partition-id" in config:
        value, offset = config["partition-id"], 1
    else:
        raise ConfigurationError(
            f"set node config {CLIENT_ID_CONFIG} (or partition-id) on every SuperNode")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigurationError(f"bad securefl client id in node config: {value!r}")
    try:
        cid = int(value) + offset
    except ValueError:
        raise ConfigurationError(f"bad securefl client id in node config: {value!r}") from None
    if cid < 1:
        raise ConfigurationError(f"securefl client ids must be positive, got {cid}")
    return cid


def _has_identity(context: Context) -> bool:
    config = context.node_config
    return IDENTITY_KEY_CONFIG in config and PINNED_KEYS_CONFIG in config


def node_policy(context: Context) -> NodePolicy:
    """This node's policy, from its own node config (see
    :meth:`NodePolicy.from_node_config`); active mode is required when the
    node has identity keys (``securefl-identity-key`` and
    ``securefl-pinned-keys``) unless ``securefl-mode`` says otherwise.

    Raises:
        ConfigurationError: a malformed policy value.
    """
    return NodePolicy.from_node_config(context.node_config,
                                       has_identity=_has_identity(context))


def _identities(context: Context, setup: SessionSetup | None
                ) -> tuple[Ed25519PrivateKey | None, dict[int, Ed25519PublicKey] | None]:
    config = context.node_config
    if setup is not None and SecurityMode(setup.mode) is not SecurityMode.ACTIVE:
        return None, None
    if IDENTITY_KEY_CONFIG not in config or PINNED_KEYS_CONFIG not in config:
        if setup is None:
            return None, None
        raise ConfigurationError(
            f"active mode: set node config {IDENTITY_KEY_CONFIG} and {PINNED_KEYS_CONFIG}")
    key = load_identity_key(str(config[IDENTITY_KEY_CONFIG]))
    return key, load_pinned_keys(str(config[PINNED_KEYS_CONFIG]))


def _refusal(msg: Message, exc: SetupRefusedError) -> Message:
    return Message(RecordDict({RECORD: ConfigRecord({Key.REFUSED: exc.rule.value,
                                                     Key.REASON: exc.detail})}), reply_to=msg)


_PUBLIC_DESCRIPTIONS: tuple[tuple[type[BaseException], str], ...] = (
    (DataValidationError, "the node's data failed its checks"),
    (EncodingError, "the node could not encode its update"),
    (PrivacyBudgetExceededError, "the round would exceed the node's privacy budget"),
    (ProtocolError, "a protocol rule was broken"),
    (ConfigurationError, "a configuration was refused"),
)


def public_reason(exc: BaseException) -> str:
    """What an error reply tells the server about ``exc``: its type, its rule
    code when it has one (a :class:`~securefl.errors.Rule`, a node-state rule,
    a wire issue: fixed identifiers about the protocol or the node's state),
    and a fixed description of its class.  Never the exception's message,
    which may count, locate or quote the node's data (a data check's count
    of bad records, the encoder's count and index of NaN values); that stays
    in the node's log."""
    parts = [f"securefl: {type(exc).__name__}"]
    code = getattr(getattr(exc, "rule", None), "value", None)
    if isinstance(code, str):
        parts.append(f"rule '{code}'")
    if isinstance(exc, WireFormatError) and isinstance(exc.reason, str):
        parts.append(f"[{exc.reason}]")
    described = next((text for cls, text in _PUBLIC_DESCRIPTIONS if isinstance(exc, cls)),
                     "the node did not take part")
    parts.append(f"{described} (details in the node's log)")
    return ": ".join(parts)


def _error_reply(msg: Message, exc: BaseException) -> Message:
    log.warning("securefl: answering the server with an error: %s: %s",
                type(exc).__name__, exc)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                         reason=public_reason(exc)), reply_to=msg)


def is_train_message(message_type: str) -> bool:
    """Whether a message of ``message_type`` reaches one of the ClientApp's
    ``train`` functions: ``"train"`` and every ``"train.<action>"`` (Flower
    routes ``"train"`` to the function registered as ``"train.default"``,
    ``@app.train()``, and ``"train.<action>"`` to ``@app.train("<action>")``:
    a ``"train.default"`` message reaches the same ``train`` as ``"train"``)."""
    category, _, _ = str(message_type).partition(".")
    return category == MessageType.TRAIN


def _wipe(context: Context) -> None:
    context.state.config_records.pop(STATE_RECORD, None)


def securefl_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: answer securefl's secure aggregation messages.

    Use it exactly where ``secaggplus_mod`` was: ``ClientApp(mods=[securefl_mod])``.
    A ``train`` message (type ``"train"`` or ``"train.<action>"``, see
    :func:`is_train_message`) without the ``securefl`` record gets an error
    reply (rule ``malformed-message``) and does not reach ``train``: passed
    through, a server could have the node train outside any session and send
    back its local model unmasked.  Other message types pass through.
    A setup the node's policy refuses (:class:`SetupRefusedError`) wipes
    any session and becomes a refusal reply (``refused``: the rule); any
    other securefl error (a protocol violation by the server, a malformed
    setup, an update the encoder refuses, a privacy budget refusal raised by
    ``train``) wipes the session and becomes an error reply whose reason is
    :func:`public_reason` (the type, the rule code, a fixed description:
    nothing of the message, which stays in the node's log).  Either way the
    server sees this node as a dropout at that round.
    """
    if not is_train_message(msg.metadata.message_type):
        return call_next(msg, ctxt)
    if RECORD not in msg.content.config_records:
        # a train message outside any session: passed through, the ClientApp's
        # train would answer it, and its reply (the local model, the encoded
        # update, an exception's message) would reach the server unmasked
        return _error_reply(msg, RemoteProtocolError(
            Rule.MALFORMED, f"a train message without the {RECORD!r} record: this node trains"
            " only inside a securefl session", peer="server"))
    try:
        return _handle(msg, ctxt, call_next)
    except SetupRefusedError as exc:
        _wipe(ctxt)
        return _refusal(msg, exc)
    except SecureFLError as exc:
        _wipe(ctxt)
        return _error_reply(msg, exc)
    except BaseException:
        _wipe(ctxt)
        raise


def _reply(msg: Message, payload: bytes, extra: dict[str, Any] | None = None,
           metrics: MetricRecord | None = None) -> Message:
    content = RecordDict({RECORD: ConfigRecord({Key.PAYLOAD: payload, **(extra or {})})})
    if metrics is not None:
        content.metric_records[DP_METRICS_RECORD] = metrics
    return Message(content, reply_to=msg)


def _stage(record: ConfigRecord) -> Stage:
    value = record.get(Key.STAGE)
    if not isinstance(value, str) or value not in {s.value for s in Stage}:
        raise RemoteProtocolError(Rule.MALFORMED, "unknown securefl stage", peer="server")
    return Stage(value)


def _bytes_field(record: ConfigRecord, key: str, rnd: Any = None) -> bytes:
    value = record.get(key)
    if not isinstance(value, bytes):
        raise RemoteProtocolError(Rule.MALFORMED, f"the server's message has no bytes {key!r}",
                                  peer="server", round=rnd)
    return value


def _fl_round(record: ConfigRecord, rnd: Any = None) -> int:
    value = record.get(Key.FL_ROUND)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RemoteProtocolError(Rule.MALFORMED, "the server's message has no integer"
                                  f" {Key.FL_ROUND!r}", peer="server", round=rnd)
    return value


def _check_policy(ctxt: Context, setup: SessionSetup, my_id: int) -> None:
    policy = node_policy(ctxt)
    mode = SecurityMode(setup.mode)
    pinned_ids = None
    if mode is SecurityMode.ACTIVE and PINNED_KEYS_CONFIG in ctxt.node_config:
        pinned_ids = load_pinned_keys(str(ctxt.node_config[PINNED_KEYS_CONFIG])).keys()
    policy.check(fl_round=setup.fl_round, mode=mode, num_clients=setup.num_clients,
                 threshold=setup.threshold, client_ids=setup.client_ids,
                 vector_length=setup.codec().vector_length, my_id=my_id, pinned_ids=pinned_ids,
                 graph=parse_graph(setup.graph), min_survivors=setup.min_survivors)


def _handle(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    record = msg.content.config_records[RECORD]
    stage = _stage(record)
    my_id = node_client_id(ctxt)
    if stage is Stage.REGISTER:
        key, _ = _identities(ctxt, None)
        extra: dict[str, Any] = {Key.CLIENT_ID: my_id}
        if key is not None:
            extra[Key.IDENTITY] = signing.public_bytes(key)
        return _reply(msg, b"", extra)
    if stage is Stage.ABORT:
        state = ctxt.state.config_records.get(STATE_RECORD)
        if state is not None and SessionSetup.from_bytes(
                bytes(state[Key.SETUP])).fl_round == _fl_round(record):  # type: ignore[arg-type]
            _wipe(ctxt)
        return _reply(msg, b"")
    if stage is Stage.ADVERTISE_KEYS:
        _wipe(ctxt)  # a new session replaces any unfinished one
        fl_round = _fl_round(record, stage.round)
        check_no_insecure_noise(ctxt.run_config, fl_round=fl_round)
        NodeDPLimits.from_node_config(ctxt.node_config).check_run_config(ctxt.run_config,
                                                                         fl_round=fl_round)
        setup = SessionSetup.from_bytes(_bytes_field(record, Key.SETUP, stage.round))
        if setup.fl_round != fl_round:
            raise RemoteProtocolError(Rule.WRONG_SESSION, "the setup is for another federation"
                                      " round", peer="server", round=stage.round)
        _check_policy(ctxt, setup, my_id)
        if NODE_RECORD not in ctxt.state.config_records:
            ctxt.state.config_records[NODE_RECORD] = ConfigRecord({"first-round": fl_round})
        seed = os.urandom(32)
        session = _session(ctxt, setup, my_id, seed)
        advert = session.start()
        ctxt.state.config_records[STATE_RECORD] = ConfigRecord({
            Key.SETUP: setup.to_bytes(), "seed": seed, Key.CLIENT_ID: my_id, "received": b"",
        })
        return _reply(msg, wire.encode(advert))
    state = ctxt.state.config_records.get(STATE_RECORD)
    if state is None:
        raise LocalProtocolError(Rule.WRONG_ROUND, f"{stage.value} without a session",
                                 peer=my_id)
    setup = SessionSetup.from_bytes(bytes(state[Key.SETUP]))  # type: ignore[arg-type]
    if _fl_round(record, stage.round) != setup.fl_round:
        raise RemoteProtocolError(Rule.WRONG_SESSION, "message for another federation round",
                                  peer="server", round=stage.round)
    config = setup.secagg_config()
    session = _session(ctxt, setup, my_id, bytes(state["seed"]))  # type: ignore[arg-type]
    session.start()
    received = bytes(state["received"])  # type: ignore[arg-type]
    for raw in _split(received):
        old = wire.decode(raw, config=config)
        if isinstance(old, ShareDelivery):  # the real input was sent; only the state matters
            session.provide_input(np.zeros(config.vector_length, dtype=np.uint64))
        session.handle(old)
    raw = _bytes_field(record, Key.PAYLOAD, stage.round)
    expected: type = SparseKeyRoster if stage is Stage.SHARE_KEYS \
        and config.roster_delivery == "merkle" else _EXPECTED[stage]
    message = wire.decode(raw, config=config, expect=expected)
    metrics = None
    if stage is Stage.MASKED_INPUT_COLLECTION:
        if session.state is not ClientState.SHARES_SENT:
            # a masked-input message again (the input was already sent): the
            # session refuses it, so train must not run for it, nor charge the
            # node's accountant for a round it already trained in
            raise LocalProtocolError(Rule.SESSION_FINISHED, "the masked input was already"
                                     " sent", peer=my_id, round=stage.round)
        train_config = msg.content.config_records.get("config")
        check_no_insecure_noise(ctxt.run_config, train_config, fl_round=setup.fl_round)
        metrics = _train_and_provide(msg, ctxt, call_next, setup, session, my_id)
    reply = session.handle(message)
    if session.state is ClientState.DONE:
        _wipe(ctxt)
    else:
        state["received"] = received + struct.pack(">I", len(raw)) + raw
    element = config.element_bytes
    return _reply(msg, wire.encode(reply, element_bytes=element), None, metrics)


def _session(ctxt: Context, setup: SessionSetup, my_id: int, seed: bytes) -> ClientSession:
    key, pinned = _identities(ctxt, setup)
    return ClientSession(setup.secagg_config(), my_id, identity_key=key, peer_identities=pinned,
                         rng=DeterministicRandom(seed))


def _split(blob: bytes) -> list[bytes]:
    out = []
    offset = 0
    while offset < len(blob):
        (size,) = struct.unpack_from(">I", blob, offset)
        out.append(blob[offset + 4:offset + 4 + size])
        offset += 4 + size
    return out


def _train_and_provide(msg: Message, ctxt: Context, call_next: ClientAppCallable,
                       setup: SessionSetup, session: ClientSession,
                       my_id: int) -> MetricRecord:
    if len(msg.content.array_records) != 1:
        raise RemoteProtocolError(Rule.MALFORMED, "the masked-input message must carry the"
                                  " global model as one ArrayRecord", peer="server")
    global_arrays = next(iter(msg.content.array_records.values())).to_numpy_ndarrays()
    msg.content.config_records[ENCODE_RECORD] = ConfigRecord({Key.SETUP: setup.to_bytes()})
    try:
        out = call_next(msg, ctxt)
    except SecureFLError:
        raise
    except Exception as exc:
        # the ClientApp's training raised something that is not ours (torch,
        # a user's model or data loader): its message may quote the data (an
        # out-of-range token id, a shape); left to escape, Flower's runtime
        # would send it to the server.  The text stays in the node's log.
        log.warning("securefl: train raised %s: %s", type(exc).__name__, exc)
        raise LocalProtocolError(Rule.MISSING_INPUT, "train raised an exception that is not"
                                 " securefl's", peer=my_id) from None
    if out.has_error():
        raise LocalProtocolError(Rule.MISSING_INPUT, f"train failed: {out.error.reason}",
                                 peer=my_id)
    metrics: dict[str, Any] = {}
    for record in out.content.metric_records.values():
        metrics.update(record)
    codec = setup.codec()
    if ENCODED_RECORD in out.content.array_records:
        vector = _encoded_vector(out.content.array_records[ENCODED_RECORD], codec)
    else:
        vector = _encode_local_model(out, global_arrays, metrics, setup,
                                     NodeDPLimits.from_node_config(ctxt.node_config))
    session.provide_input(vector)
    # the weight is inside the secure sum; the clipped count and loss stay here
    return MetricRecord({k: v for k, v in metrics.items() if k.startswith(DP_METRIC_PREFIX)})


def _encoded_vector(record: Any, codec: FixedPointCodec) -> np.ndarray:
    """The update a securefl ``train`` encoded itself (checked, not trusted
    blindly: one uint64 vector of the codec's length, inside the ring)."""
    arrays = record.to_numpy_ndarrays()
    if len(arrays) != 1:
        raise EncodingError(f"{ENCODED_RECORD} must hold exactly one array")
    vector = np.asarray(arrays[0])
    if vector.dtype != np.uint64 or vector.shape != (codec.vector_length,):
        raise EncodingError(f"{ENCODED_RECORD} must be a uint64 vector of length"
                            f" {codec.vector_length}")
    if codec.bits < 64 and vector.size and int(vector.max()) >> codec.bits:
        raise EncodingError(f"{ENCODED_RECORD} holds values outside Z_2^{codec.bits}")
    return vector


def _encode_local_model(out: Message, global_arrays: list[np.ndarray],
                        metrics: dict[str, Any], setup: SessionSetup,
                        limits: NodeDPLimits) -> np.ndarray:
    """Encode ``local - global`` for a ``train`` that returned its local model
    (any Flower ClientApp), rounding from the OS CSPRNG.

    The weight is 1 unless ``train`` returned ``num-examples``, which the
    node's limits must allow (node config ``securefl-allow-weighting-examples``:
    the record count enters the sum); a count outside ``1..max_weight`` of the
    session's codec is clamped into it, so that whether the node answers never
    depends on its count.

    Raises:
        DPLimitRefusedError: ``num-examples`` without the node's consent.
        EncodingError: a malformed local model or ``num-examples`` metric.
    """
    if len(out.content.array_records) != 1:
        raise EncodingError("train must return the local model as exactly one ArrayRecord")
    local = next(iter(out.content.array_records.values())).to_numpy_ndarrays()
    if len(local) != len(global_arrays):
        raise EncodingError(f"train returned {len(local)} arrays, the model has"
                            f" {len(global_arrays)}")
    update = [np.subtract(np.asarray(lo), np.asarray(gl).astype(lo.dtype, copy=False))
              for lo, gl in zip(local, global_arrays, strict=True)]
    codec = setup.codec()
    weight = metrics.get(NUM_EXAMPLES, 1)
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise EncodingError(f"train's {NUM_EXAMPLES} metric must be an integer")
    if NUM_EXAMPLES in metrics:
        if not limits.allow_weighting_examples:
            raise DPLimitRefusedError(
                DPLimitRule.WEIGHTING,
                f"train returned a {NUM_EXAMPLES} metric: the node's record count would enter"
                f" the sum as its weight; set node config {ALLOW_WEIGHTING_EXAMPLES_CONFIG}=true"
                " to allow it", fl_round=setup.fl_round)
        weight = codec.clamp_weight(weight)
    rounding = rounding_randomness(None, setup.fl_round, codec.num_values)
    return codec.encode(update, rounding, weight=int(weight)).vector  # type: ignore[arg-type]
