"""Conformance cases from the JSON test vectors (SPEC.md section 14).

Primitive vectors run against the target's :class:`Primitives` (one case
per ``tcId``); whole-round transcripts are replayed against the target's
server (always) and clients (when the client factory declares
``fixed_randomness``), comparing every byte and the result.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from securefl.conformance.adapters import ClientSpec, Primitives, ServerSpec
from securefl.conformance.cases import Case, CaseFailedError, CaseSkippedError, Target
from securefl.conformance.jsonio import DEFAULT_VECTOR_DIR, config_from_json, load
from securefl.errors import AbortError, ConfigurationError, ProtocolError, Rule

SECTION_OF_FILE = {"graph_test": "3.5", "kdf_test": "4", "prg_test": "5", "shamir_test": "6",
                   "aead_test": "7", "merkle_test": "10.1"}


def vector_cases(directory: Path = DEFAULT_VECTOR_DIR) -> list[Case]:
    """Every vector case found in ``directory``, primitives first.

    Raises:
        ConfigurationError: the directory does not exist or holds no vectors
            (e.g. an installed copy without ``protocols/``: pass ``--vectors``),
            or a file is not valid JSON or lacks a field a case reads, or has
            one of the wrong type (checked here, before any case runs, so a
            malformed file is never blamed on the implementation under test).
    """
    if not directory.is_dir() or not any(directory.glob("*.json")):
        raise ConfigurationError(f"no test vectors in {directory}: pass --vectors DIR (the"
                                 " protocols/secagg/v1/vectors directory of the repository)")
    cases: list[Case] = []
    for path in sorted(directory.glob("*_test.json"),
                       key=lambda p: (float(SECTION_OF_FILE.get(p.stem, "99")), p.stem)):
        data = load(path)
        _check_primitive_file(path.name, data)
        stem = path.stem
        section = SECTION_OF_FILE.get(stem, "14")
        for group in data["testGroups"]:
            for test in group["tests"]:
                title = (f"{data['algorithm']}: {group['type']} tcId {test['tcId']}"
                         f" ({test['result']}{', ' + test['comment'] if test['comment'] else ''})")
                cases.append(Case(f"{section}/{stem}/{test['tcId']}", section, title, "vectors",
                                  partial(_primitive, group, test)))
    for path in sorted(directory.glob("round_*.json")):
        data = load(path)
        _check_round_file(path.name, data)
        stem = path.stem
        cases.append(Case(f"14.3/{stem}/server", "14.3",
                          f"server replays transcript '{data['name']}' byte for byte",
                          "vectors", partial(_replay_server, data)))
        cases.append(Case(f"14.3/{stem}/clients", "14.3",
                          f"clients replay transcript '{data['name']}' byte for byte",
                          "vectors", partial(_replay_clients, data)))
    return cases


# -- the shape of a vector file ------------------------------------------------

MAX_VECTOR_INT = 1 << 20
"""PRG lengths and list sizes in a vector file stay below this (the shipped
vectors use at most a few hundred), so a file cannot ask for gigabytes."""


def _hex(v: Any) -> bool:
    if not isinstance(v, str) or len(v) % 2:
        return False
    try:
        bytes.fromhex(v)
    except ValueError:
        return False
    return v.isascii() and " " not in v


def _small(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_VECTOR_INT


def _int64(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(1 << 63) <= v < 1 << 64


def _ints(v: Any) -> bool:
    return isinstance(v, list) and len(v) < MAX_VECTOR_INT and all(_int64(x) for x in v)


def _decimals(v: Any) -> bool:
    return isinstance(v, list) and all(
        _int64(x) or (isinstance(x, str) and x.isascii() and x.isdigit() and len(x) <= 20)
        for x in v)


def _hexes(v: Any) -> bool:
    return isinstance(v, list) and all(_hex(x) for x in v)


def _neighbours(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 10 and _ints(x)
        for k, x in v.items())


_KIND: dict[str, Callable[[Any], bool]] = {
    "hex": _hex, "int": _int64, "count": _small, "ints": _ints, "decimals": _decimals,
    "hexes": _hexes,
    "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
    "strs": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "neighbours": _neighbours, "result": lambda v: v in ("valid", "invalid"),
    "dict": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list),
    "rule": lambda v: isinstance(v, dict) and v.get("rule") in {r.value for r in Rule},
}

_COMMON_TEST = {"tcId": "int", "comment": "str", "flags": "strs", "result": "result"}
_TEST_FIELDS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    # type: (group fields, test fields)
    "KdfTest": ({"label": "str"}, {"secret": "hex", "version": "int", "sessionId": "hex",
                                   "clientIds": "ints", "key": "hex"}),
    "PrgTest": ({"bits": "int"}, {"key": "hex", "length": "count", "mask": "decimals"}),
    "ShamirShareTest": ({}, {"secret": "hex", "coefficients": "ints", "holders": "ints",
                             "threshold": "int", "shares": "hexes"}),
    "ShamirReconstructTest": ({}, {"holders": "ints", "shares": "hexes", "threshold": "int",
                                   "secret": "hex"}),
    "AeadTest": ({}, {"key": "hex", "nonce": "hex", "ciphertext": "hex", "aad": "hex",
                      "plaintext": "hex"}),
    "HararyGraphTest": ({"graph": "str"}, {"roster": "ints", "sessionId": "hex",
                                           "neighbours": "neighbours"}),
    "MerkleLeafTest": ({}, {"sender": "int", "encryptionKey": "hex", "maskingKey": "hex",
                            "seedCommitment": "hex", "noiseCommitments": "hexes",
                            "leaf": "hex"}),
    "MerkleInclusionTest": ({}, {"leaf": "hex", "index": "int", "treeSize": "int",
                                 "inclusionPath": "hexes", "root": "hex"}),
}
_OP_FIELDS: dict[str, dict[str, str]] = {
    "client_start": {"client": "int", "output": "hex"},
    "client_handle": {"client": "int", "input": "hex", "output": "hex", "round": "str"},
    "server_receive": {"client": "int", "message": "hex", "success": "bool"},
    "server_close_round": {"success": "bool", "round": "str", "outputs": "list"},
}


def _need(where: str, obj: Any, fields: dict[str, str]) -> None:
    if not isinstance(obj, dict):
        raise ConfigurationError(f"{where}: expected a JSON object")
    for key, kind in fields.items():
        if key not in obj:
            raise ConfigurationError(f"{where}: missing {key!r}")
        if not _KIND[kind](obj[key]):
            raise ConfigurationError(f"{where}: {key!r} is not a valid {kind}")


def _check_primitive_file(name: str, data: Any) -> None:
    """Every field a primitive case reads is present and of its type."""
    _need(name, data, {"algorithm": "str", "testGroups": "list"})
    for g, group in enumerate(data["testGroups"]):
        where = f"{name} group {g}"
        _need(where, group, {"type": "str", "tests": "list"})
        if group["type"] not in _TEST_FIELDS:
            raise ConfigurationError(f"{where}: unknown test type {group['type']!r}"[:200])
        group_fields, test_fields = _TEST_FIELDS[group["type"]]
        _need(where, group, group_fields)
        for t, test in enumerate(group["tests"]):
            _need(f"{where} test {t}", test, {**_COMMON_TEST, **test_fields})


def _check_round_file(name: str, data: Any) -> None:
    """Every field a transcript replay reads is present and of its type
    (the configuration is parsed, and its digest checked, here too)."""
    _need(name, data, {"name": "str", "config": "dict", "randomness": "dict",
                       "clients": "list", "operations": "list", "result": "dict"})
    config_from_json(data["config"])
    _need(f"{name} randomness", data["randomness"], {"serverSeed": "hex"})
    for c, client in enumerate(data["clients"]):
        where = f"{name} client {c}"
        _need(where, client, {"id": "int", "input": "decimals", "randomSeed": "hex"})
        for key in ("identityPrivateKey", "identityPublicKey"):
            if key in client:
                _need(where, client, {key: "hex"})
    ids = {client["id"] for client in data["clients"]}
    for o, op in enumerate(data["operations"]):
        where = f"{name} operation {o + 1}"
        _need(where, op, {"op": "str"})
        if op["op"] not in _OP_FIELDS:
            raise ConfigurationError(f"{where}: unknown op {op['op']!r}"[:200])
        _need(where, op, _OP_FIELDS[op["op"]])
        if op["op"] in ("client_start", "client_handle") and op["client"] not in ids:
            raise ConfigurationError(f"{where}: client {op['client']} is not in 'clients'")
        if op["op"] == "server_receive" and not op["success"]:
            _need(where, op, {"error": "rule"})
        for output in op.get("outputs", []) if op["op"] == "server_close_round" else []:
            _need(f"{where} output", output, {"recipient": "int", "message": "hex"})
    _need(f"{name} result", data["result"], {"aborted": "bool"})
    if not data["result"]["aborted"]:
        _need(f"{name} result", data["result"], {"survivors": "ints", "total": "decimals",
                                                 "statuses": "dict"})


# -- primitives ---------------------------------------------------------------


def _primitive(group: dict[str, Any], test: dict[str, Any], target: Target) -> None:
    if target.primitives is None:
        raise CaseSkippedError("no primitives adapter given (--primitives)")
    prims = target.primitives()
    check = _CHECKS[group["type"]]
    check(prims, group, test)


def _outcome(compute: Callable[[], Any], expected: Any, valid: bool, what: str) -> None:
    try:
        got = compute()
    except Exception as exc:  # a rejection, whatever its type
        if valid:
            raise CaseFailedError(f"{what}: rejected a valid input ({type(exc).__name__}: {exc})"
                             ) from None
        return
    if valid and got != expected:
        raise CaseFailedError(f"{what}: got {_short(got)}, expected {_short(expected)}")
    if not valid and got == expected:
        raise CaseFailedError(f"{what}: produced the output of the flagged mistake")


def _short(value: Any) -> str:
    text = value.hex() if isinstance(value, bytes) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kdf(p: Primitives, group: dict[str, Any], t: dict[str, Any]) -> None:
    _outcome(lambda: p.kdf(bytes.fromhex(t["secret"]), group["label"].encode(), t["version"],
                           bytes.fromhex(t["sessionId"]), list(t["clientIds"])),
             bytes.fromhex(t["key"]), t["result"] == "valid", "derived key")


def _prg(p: Primitives, group: dict[str, Any], t: dict[str, Any]) -> None:
    valid = t["result"] == "valid"
    expected = [int(x) for x in t["mask"]]
    if not valid and not expected:
        try:
            p.prg(bytes.fromhex(t["key"]), group["bits"], t["length"])
        except Exception:
            return
        raise CaseFailedError(f"accepted a {len(t['key']) // 2}-byte PRG key")
    _outcome(lambda: [int(x) for x in p.prg(bytes.fromhex(t["key"]), group["bits"],
                                            t["length"])], expected, valid, "mask")


def _shamir(p: Primitives, group: dict[str, Any], t: dict[str, Any]) -> None:
    shares = [bytes.fromhex(s) for s in t["shares"]]
    if group["type"] == "ShamirShareTest":
        _outcome(lambda: list(p.shamir_evaluate(bytes.fromhex(t["secret"]), t["coefficients"],
                                                t["holders"], t["threshold"])),
                 shares, t["result"] == "valid", "shares")
        return
    if t["result"] == "valid":
        _outcome(lambda: p.shamir_reconstruct(t["holders"], shares, t["threshold"]),
                 bytes.fromhex(t["secret"]), True, "reconstructed secret")
        return
    try:
        got = p.shamir_reconstruct(t["holders"], shares, t["threshold"])
    except Exception:
        return
    raise CaseFailedError(f"reconstruction from invalid shares returned {_short(got)} instead of"
                     " failing")


def _aead(p: Primitives, _: dict[str, Any], t: dict[str, Any]) -> None:
    args = (bytes.fromhex(t["key"]), bytes.fromhex(t["nonce"]), bytes.fromhex(t["ciphertext"]),
            bytes.fromhex(t["aad"]))
    if t["result"] == "valid":
        _outcome(lambda: p.aead_open(*args), bytes.fromhex(t["plaintext"]), True, "plaintext")
        return
    try:
        p.aead_open(*args)
    except Exception:
        return
    raise CaseFailedError(f"opened a ciphertext that must fail ({', '.join(t['flags'])})")


def _graph(p: Primitives, group: dict[str, Any], t: dict[str, Any]) -> None:
    expected = {int(c): list(v) for c, v in t["neighbours"].items()}
    _outcome(lambda: {int(c): sorted(v) for c, v in p.graph_neighbours(
        group["graph"], list(t["roster"]), bytes.fromhex(t["sessionId"])).items()},
        expected, t["result"] == "valid", "neighbours")


def _optional(p: Primitives, name: str) -> Callable[..., Any]:
    method = getattr(p, name, None)
    if not callable(method):
        raise CaseSkippedError(f"the primitives adapter has no {name} (sparse roster"
                               " delivery, SPEC.md 10.1a, is optional)")
    return method  # type: ignore[no-any-return]


def _merkle_leaf(p: Primitives, _: dict[str, Any], t: dict[str, Any]) -> None:
    leaf = _optional(p, "roster_leaf")
    _outcome(lambda: leaf(t["sender"], bytes.fromhex(t["encryptionKey"]),
                          bytes.fromhex(t["maskingKey"]), bytes.fromhex(t["seedCommitment"]),
                          [bytes.fromhex(c) for c in t["noiseCommitments"]]),
             bytes.fromhex(t["leaf"]), t["result"] == "valid", "leaf hash")


def _merkle_inclusion(p: Primitives, _: dict[str, Any], t: dict[str, Any]) -> None:
    verify = _optional(p, "roster_inclusion")
    try:
        ok = verify(bytes.fromhex(t["leaf"]), t["index"], t["treeSize"],
                    [bytes.fromhex(h) for h in t["inclusionPath"]], bytes.fromhex(t["root"]))
    except Exception:  # a rejection, whatever its type
        ok = False
    valid = t["result"] == "valid"
    if ok is not valid:
        verdict = "refused a valid" if valid else "accepted an invalid"
        raise CaseFailedError(f"{verdict} inclusion proof ({', '.join(t['flags'])})")


_CHECKS: dict[str, Callable[[Primitives, dict[str, Any], dict[str, Any]], None]] = {
    "HararyGraphTest": _graph, "KdfTest": _kdf, "PrgTest": _prg, "ShamirShareTest": _shamir,
    "ShamirReconstructTest": _shamir, "AeadTest": _aead, "MerkleLeafTest": _merkle_leaf,
    "MerkleInclusionTest": _merkle_inclusion,
}


# -- whole rounds -------------------------------------------------------------


def _pinned(data: dict[str, Any]) -> dict[int, bytes]:
    return {c["id"]: bytes.fromhex(c["identityPublicKey"]) for c in data["clients"]
            if "identityPublicKey" in c}


def _replay_server(data: dict[str, Any], target: Target) -> None:
    config = config_from_json(data["config"])
    server = target.server(ServerSpec(config, _pinned(data),
                                      bytes.fromhex(data["randomness"]["serverSeed"])))
    for index, op in enumerate(data["operations"], 1):
        where = f"operation {index} ({op['op']})"
        if op["op"] == "server_receive":
            message = bytes.fromhex(op["message"])
            try:
                server.receive(message)
            except ProtocolError as exc:
                if op["success"]:
                    raise CaseFailedError(f"{where}: refused a valid message from client"
                                     f" {op['client']}: {exc}") from None
                if exc.rule is not Rule(op["error"]["rule"]):
                    raise CaseFailedError(f"{where}: refused with '{exc.rule.value}', expected"
                                     f" '{op['error']['rule']}'") from None
                continue
            if not op["success"]:
                raise CaseFailedError(f"{where}: accepted a message that must be refused with"
                                 f" '{op['error']['rule']}'")
        elif op["op"] == "server_close_round":
            try:
                out = server.close_round()
            except AbortError as exc:
                if op["success"]:
                    raise CaseFailedError(f"{where}: aborted {op['round']}: {exc}") from None
                continue
            if not op["success"]:
                raise CaseFailedError(f"{where}: closed {op['round']} but the round must abort")
            expected = [(o["recipient"], o["message"]) for o in op["outputs"]]
            got = sorted((r, m.hex()) for r, m in out)
            if got != sorted(expected):
                diff = [r for (r, m), (r2, m2) in zip(got, sorted(expected), strict=False)
                        if (r, m) != (r2, m2)]
                raise CaseFailedError(f"{where}: messages after {op['round']} differ (recipients"
                                 f" {[r for r, _ in got]} vs {[r for r, _ in expected]};"
                                 f" first differing recipient {diff[:1]})")
    result = data["result"]
    if result["aborted"]:
        return
    res = server.result()
    if list(res.survivors) != result["survivors"]:
        raise CaseFailedError(f"survivors {list(res.survivors)}, expected {result['survivors']}")
    if [int(x) for x in res.total] != [int(x) for x in result["total"]]:
        raise CaseFailedError("the aggregate differs from the transcript's result")
    if "noiseVariance" in result and (
            res.noise_variance != result["noiseVariance"]
            or [list(p) for p in res.noise_removed] != result["noiseRemoved"]):
        raise CaseFailedError(f"released noise variance {res.noise_variance} and removals"
                              f" {[list(p) for p in res.noise_removed][:10]}, expected"
                              f" {result['noiseVariance']} and {result['noiseRemoved'][:10]}"
                              " (SPEC [NZ-6])")
    statuses = {str(c): s for c, s in server.statuses().items()}
    if statuses != result["statuses"]:
        raise CaseFailedError(f"client statuses {statuses}, expected {result['statuses']}")


def _replay_clients(data: dict[str, Any], target: Target) -> None:
    if not target.client_fixed_randomness:
        raise CaseSkippedError("the client factory does not declare fixed_randomness")
    config = config_from_json(data["config"])
    pinned = _pinned(data)
    clients = {}
    for record in data["clients"]:
        identity = record.get("identityPrivateKey")
        clients[record["id"]] = target.client(ClientSpec(
            config, record["id"], tuple(int(x) for x in record["input"]),
            bytes.fromhex(identity) if identity else None, pinned,
            bytes.fromhex(record["randomSeed"])))
    for index, op in enumerate(data["operations"], 1):
        where = f"operation {index} ({op['op']} client {op.get('client')})"
        if op["op"] == "client_start":
            got = clients[op["client"]].start()
        elif op["op"] == "client_handle":
            try:
                got = clients[op["client"]].handle(bytes.fromhex(op["input"]))
            except ProtocolError as exc:
                raise CaseFailedError(f"{where}: refused a valid {op['round']} message: {exc}"
                                 ) from None
        else:
            continue
        if got.hex() != op["output"]:
            raise CaseFailedError(f"{where}: output differs from the transcript")
