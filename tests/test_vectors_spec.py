"""A second, independent reading of SPEC.md: the byte layouts of the spec,
written from its text with the standard library (hashlib, hmac) and AES from
``cryptography`` only, reproduce the committed vectors.  This catches a spec
that says something other than what the code does."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import struct
from fractions import Fraction

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.conformance.jsonio import DEFAULT_VECTOR_DIR
from securefl.wire import secagg_pb2 as pb


def _load(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((DEFAULT_VECTOR_DIR / name).read_text())


def hkdf(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 with an empty salt (SPEC.md 4.1)."""
    prk = hmac.new(b"\0" * 32, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def spec_info(purpose: str, version: int, sid: bytes, ids: list[int]) -> bytes:
    label = b"securefl/secagg/" + purpose.encode()
    return (struct.pack(">H", len(label)) + label + struct.pack(">I", version)
            + struct.pack(">H", len(sid)) + sid + struct.pack(">H", len(ids))
            + b"".join(struct.pack(">I", i) for i in ids))


def spec_prg(key: bytes, bits: int, length: int) -> list[int]:
    width = next(w for w in (1, 2, 4, 8) if bits <= 8 * w)
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(
        bytes(width * length))
    return [int.from_bytes(stream[i * width:(i + 1) * width], "little") % (1 << bits)
            for i in range(length)]


def test_kdf_layout_matches_the_spec() -> None:
    for group in _load("kdf_test.json")["testGroups"]:
        for t in group["tests"]:
            info = spec_info(group["label"], t["version"], bytes.fromhex(t["sessionId"]),
                             t["clientIds"])
            assert info.hex() == t["info"]
            derived = hkdf(bytes.fromhex(t["secret"]), info)
            assert (derived.hex() == t["key"]) is (t["result"] == "valid"), t["tcId"]


def test_prg_mapping_matches_the_spec() -> None:
    checked = 0
    for group in _load("prg_test.json")["testGroups"]:
        for t in group["tests"]:
            if t["result"] == "valid":
                assert spec_prg(bytes.fromhex(t["key"]), group["bits"], t["length"]) == [
                    int(x) for x in t["mask"]]
                checked += 1
    assert checked >= 20


def test_aead_nonce_and_associated_data_match_the_spec() -> None:
    for t in _load("aead_test.json")["testGroups"][0]["tests"]:
        if t["result"] != "valid":
            continue
        sender, recipient = t["sender"], t["recipient"]
        assert t["nonce"] == (bytes(4) + struct.pack(">II", sender, recipient)).hex()
        ad = (b"securefl/secagg/v1/shares" + struct.pack(">I", 1)
              + bytes.fromhex(t["sessionId"]) + struct.pack(">II", sender, recipient))
        assert t["aad"] == ad.hex()


def test_config_digest_and_session_id_match_the_spec() -> None:
    for path in sorted(DEFAULT_VECTOR_DIR.glob("round_*.json")):
        data = json.loads(path.read_text())
        c = data["config"]
        graph, context = c["graph"].encode(), bytes.fromhex(c["context"])
        digest = hashlib.sha256(
            b"securefl/secagg/config"
            + struct.pack(">IIIQB", 1, c["numClients"], c["threshold"], c["vectorLength"],
                          c["bits"])
            + c["mode"].encode().ljust(16, b"\0")
            + struct.pack(">I", len(c["clientIds"]))
            + b"".join(struct.pack(">I", i) for i in sorted(c["clientIds"]))
            + struct.pack(">I", len(graph)) + graph + struct.pack(">I", len(context)) + context
            + struct.pack(">I", max(c["threshold"], c["minSurvivors"]))
            + _noise_plan_bytes(c) + _roster_delivery_bytes(c)
        ).digest()
        assert digest.hex() == c["digest"], path.name
        roster_op = next(op for op in data["operations"] if op["op"] == "server_close_round")
        if c.get("rosterDelivery") == "merkle":
            sid, entries = _merkle_session_id(roster_op, digest, sorted(c["clientIds"]))
        else:
            roster = pb.SecAggMessage.FromString(
                bytes.fromhex(roster_op["outputs"][0]["message"])).key_roster
            assert roster.config_digest == digest
            sid = hashlib.sha256(
                b"securefl/secagg/v1/session-id" + digest
                + struct.pack(">I", len(roster.entries))
                + b"".join(struct.pack(">I", e.sender) + e.encryption_key + e.masking_key
                           + e.seed_commitment + b"".join(e.noise_commitments)
                           for e in roster.entries)).digest()
            entries = {e.sender: e for e in roster.entries}
        shares_op = next(op for op in data["operations"] if op["op"] == "client_handle")
        shares = pb.SecAggMessage.FromString(bytes.fromhex(shares_op["output"]))
        assert shares.encrypted_shares.session_id == sid, path.name
        # every advertised seed commitment is [R0-10], and the masking key is the
        # public key of the clamped scalar [SSS-5] that was shared
        for client in data["clients"]:
            if "selfMaskSeed" not in client:
                continue
            commitment = hashlib.sha256(
                b"securefl/secagg/v1/seed-commitment" + digest
                + struct.pack(">I", client["id"]) + bytes.fromhex(client["selfMaskSeed"])
            ).digest()
            assert client["seedCommitment"] == commitment.hex()
            if client["id"] in entries:
                assert entries[client["id"]].seed_commitment == commitment
            # [NZ-2]: one commitment per excess-noise seed, advertised in order
            noise_commitments = [hashlib.sha256(
                b"securefl/secagg/v1/noise-seed-commitment" + digest
                + struct.pack(">II", client["id"], j) + bytes.fromhex(seed)).digest()
                for j, seed in enumerate(client.get("noiseSeeds", []))]
            assert [x.hex() for x in noise_commitments] == client.get("noiseCommitments", [])
            if client["id"] in entries:
                assert list(entries[client["id"]].noise_commitments) == noise_commitments
            scalar = bytes.fromhex(client["maskingPrivateKey"])
            assert scalar[0] & 7 == 0 and scalar[31] & 0xC0 == 0x40, "not clamped"
        # the self mask key of every client that shared is the spec's derivation
        for client in data["clients"]:
            if "selfMaskKey" in client:
                key = hkdf(bytes.fromhex(client["selfMaskSeed"]),
                           spec_info("self-mask", 1, sid, [client["id"]]))
                assert key.hex() == client["selfMaskKey"]
            # [NZ-3]: excess-noise keys are HKDF of the seed, label noise/excess
            for j, seed in enumerate(client.get("noiseSeeds", []) if "selfMaskKey" in client
                                     else []):
                key = hkdf(bytes.fromhex(seed), spec_info("noise/excess", 1, sid,
                                                          [client["id"], j]))
                assert key.hex() == client["excessNoiseKeys"][j]


def _roster_delivery_bytes(c: dict) -> bytes:  # type: ignore[type-arg]
    """SPEC [MRK-1]: appended to the digest input only for a delivery other than full."""
    delivery = c.get("rosterDelivery", "full")
    if delivery == "full":
        return b""
    return b"roster-delivery" + struct.pack(">I", len(delivery)) + delivery.encode()


def _spec_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"securefl/secagg/v1/roster-node" + left + right).digest()


def _spec_verify(leaf: bytes, index: int, size: int, path: bytes, root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2, as SPEC [MRK-6] cites it."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for i in range(0, len(path), 32):
        p = path[i:i + 32]
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = _spec_node(p, r)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _spec_node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def _merkle_session_id(roster_op: dict, digest: bytes,  # type: ignore[type-arg]
                       invited: list[int]) -> tuple[bytes, dict]:  # type: ignore[type-arg]
    """SPEC [MRK-2]..[MRK-6]: every client's sparse roster carries the same
    bitmap and root, every entry verifies at its sender's rank, and the
    session id is [MRK-3]'s."""
    sparse = [pb.SecAggMessage.FromString(bytes.fromhex(o["message"])).sparse_key_roster
              for o in roster_op["outputs"]]
    assert len({(r.id_bitmap, r.root) for r in sparse}) == 1
    bitmap, root = sparse[0].id_bitmap, sparse[0].root
    assert len(bitmap) == (len(invited) + 7) // 8
    ids = [u for i, u in enumerate(invited) if bitmap[i // 8] >> (7 - i % 8) & 1]
    entries = {}
    for r in sparse:
        assert r.config_digest == digest
        for p in r.entries:
            e = p.entry
            leaf = hashlib.sha256(
                b"securefl/secagg/v1/roster-leaf" + struct.pack(">I", e.sender)
                + e.encryption_key + e.masking_key + e.seed_commitment
                + b"".join(e.noise_commitments)).digest()
            assert _spec_verify(leaf, ids.index(e.sender), len(ids), p.inclusion_path, root)
            entries[e.sender] = e
    assert set(entries) == set(ids)
    sid = hashlib.sha256(b"securefl/secagg/v1/session-id-merkle" + digest
                         + struct.pack(">I", len(ids)) + bitmap + root).digest()
    return sid, entries


def _noise_plan_bytes(c: dict) -> bytes:  # type: ignore[type-arg]
    """SPEC [NZ-1]: the plan's bytes appended to the digest input (none without)."""
    if "noise" not in c:
        return b""
    plan = c["noise"]
    kind = plan["calibration"].encode()
    body = (b"noise-plan/skellam" + struct.pack(">B", len(kind)) + kind
            + struct.pack(">dd", plan["targetVariance"], plan["tolerance"]))
    return struct.pack(">I", len(body)) + body


def test_masked_inputs_follow_the_spec_formula() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

    checked = 0
    for path in sorted(DEFAULT_VECTOR_DIR.glob("round_*.json")):
        data = json.loads(path.read_text())
        bits, m = data["config"]["bits"], data["config"]["vectorLength"]
        clients = {c["id"]: c for c in data["clients"]}
        for op in data["operations"]:
            if op["op"] != "client_handle" or op["round"] != "MASKED_INPUT_COLLECTION":
                continue
            u = op["client"]
            me = clients[u]
            delivery = pb.SecAggMessage.FromString(bytes.fromhex(op["input"])).share_delivery
            sid = delivery.session_id
            # [NZ-4]: the noise is added to the encoded input before the masks
            total = [int(x) + int(z) for x, z in zip(
                me["input"], me.get("noise", ["0"] * m), strict=True)]
            masks = [spec_prg(bytes.fromhex(me["selfMaskKey"]), bits, m)]
            signs = [1]
            private = X25519PrivateKey.from_private_bytes(bytes.fromhex(me["maskingPrivateKey"]))
            for entry in delivery.ciphertexts:
                v = entry.peer
                peer = X25519PublicKey.from_public_bytes(
                    bytes.fromhex(clients[v]["maskingPublicKey"]))
                key = hkdf(private.exchange(peer),
                           spec_info("pairwise-mask", 1, sid, sorted((u, v))))
                masks.append(spec_prg(key, bits, m))
                signs.append(1 if u < v else -1)
            for mask, sign in zip(masks, signs, strict=True):
                total = [(a + sign * b) % (1 << bits) for a, b in zip(total, mask, strict=True)]
            assert total == [int(x) for x in me["maskedInput"]], (path.name, u)
            checked += 1
    assert checked >= 15


def _spec_up(x: Fraction) -> float:
    """The least double >= x (SPEC [NZ-1])."""
    y = float(x)
    return y if Fraction(y) >= x else math.nextafter(y, math.inf)


def _spec_layout(c: dict) -> tuple[float, list[float]]:  # type: ignore[type-arg]
    """B and w_0..w_{J-1} of SPEC 16.2, from the vector's config."""
    plan = c["noise"]
    n, f = c["numClients"], max(c["threshold"], c["minSurvivors"])
    v, delta = Fraction(plan["targetVariance"]), Fraction(plan["tolerance"])
    if plan["calibration"] == "threshold":
        return _spec_up(v / f), []
    if f == n:
        return _spec_up(v / n), []
    j = 1
    while Fraction(n - f, n * f * (f + 1) ** (j - 1)) > delta:
        j += 1
    w0 = v * (n - f) / (n * f)
    return _spec_up(v / n), [_spec_up(w0 / (f + 1) ** i) for i in range(j)]


def _spec_poisson(lam: float, words: list[int]) -> list[int]:
    """SPEC 16.5, read literally: the integer table and the inverse CDF."""
    sd = math.sqrt(lam)
    mode, lo, hi = math.floor(lam), max(0, math.floor(lam - 12 * sd - 40)), math.ceil(
        lam + 12 * sd + 40)
    num, den = Fraction(lam).numerator, Fraction(lam).denominator
    r = {mode: 2**192}
    for k in range(mode, hi):
        r[k + 1] = r[k] * num // (den * (k + 1))
    for k in range(mode, lo, -1):
        r[k - 1] = r[k] * den * k // num
    total = sum(r.values())
    weights = {k: (r[k] << 64) // total for k in range(lo, hi + 1)}
    weights[mode] += 2**64 - sum(weights.values())
    keys = [k for k in range(lo, hi + 1) if weights[k]]
    first, last = keys[0], keys[-1]
    cumulative, acc = [], 0
    for k in range(first, last):
        acc += weights[k]
        cumulative.append(acc)
    return [first + sum(1 for c in cumulative if c <= u) for u in words]


def _spec_skellam(mu: float, m: int, key: bytes) -> list[int]:
    if mu == 0:
        return [0] * m
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(16 * m))
    words = [int.from_bytes(stream[8 * i:8 * i + 8], "little") for i in range(2 * m)]
    x, y = _spec_poisson(mu / 2, words[:m]), _spec_poisson(mu / 2, words[m:])
    return [a - b for a, b in zip(x, y, strict=True)]


def test_noise_follows_the_spec_sampler_and_selection_rule() -> None:
    """SPEC 16.2, 16.5, 16.6 read from the text: every client's noise is
    Sk(B; base key) + sum_j Sk(w_j; excess key j), and the removals and the
    released variance in the result are the rule's."""
    checked = 0
    for path in sorted(DEFAULT_VECTOR_DIR.glob("round_*.json")):
        data = json.loads(path.read_text())
        c = data["config"]
        if "noise" not in c:
            continue
        base, excess = _spec_layout(c)
        m = c["vectorLength"]
        for client in data["clients"]:
            if "noise" not in client:
                continue
            total = _spec_skellam(base, m, bytes.fromhex(client["baseNoiseKey"]))
            for j, key in enumerate(client["excessNoiseKeys"]):
                part = _spec_skellam(excess[j], m, bytes.fromhex(key))
                total = [a + b for a, b in zip(total, part, strict=True)]
            assert [str(x) for x in total] == client["noise"], (path.name, client["id"])
            checked += 1
        # the selection rule (SPEC [NZ-5]) and the released variance ([NZ-6])
        survivors = sorted(data["result"]["survivors"])
        n, f, u = c["numClients"], max(c["threshold"], c["minSurvivors"]), len(survivors)
        big_j = len(excess)
        units = -((-f * (f + 1) ** (big_j - 1) * (n - u)) // (n - f))
        digits = []
        for i in range(big_j):
            place = (f + 1) ** (big_j - 1 - i)
            digits.append(units // place)
            units %= place
        kept, pos = set(), 0
        for j, count in enumerate(digits):
            for _ in range(count):
                kept.add((survivors[pos % u], j))
                pos += 1
        removed = [[v, j] for v in survivors for j in range(big_j) if (v, j) not in kept]
        assert data["result"]["noiseRemoved"] == removed
        released = u * Fraction(base) + sum(
            (d * Fraction(w) for d, w in zip(digits, excess, strict=True)), Fraction(0))
        assert data["result"]["noiseVariance"] == float(released)
        assert released >= Fraction(c["noise"]["targetVariance"])
    assert checked >= 3
