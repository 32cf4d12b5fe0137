"""Regenerate the protocol test vectors in ``protocols/secagg/v1/vectors/``.

Usage: ``python scripts/gen_vectors.py [OUT_DIR]``.

Everything is deterministic: test inputs come from fixed labels through
``DeterministicRandom``, every party of a whole round draws its secret
randomness from its own fixed seed (SPEC.md 14.2), and Ed25519 signatures
are deterministic.  ``tests/test_vectors.py`` regenerates into a temporary
directory and fails if any byte differs from the committed files.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefl.conformance.adapters import (
    ClientSpec,
    SecureFLClient,
    SecureFLServer,
    ServerSpec,
)
from securefl.conformance.jsonio import DEFAULT_VECTOR_DIR, PROTOCOL_NAME, config_to_json, dump
from securefl.errors import AbortError, InconsistentSharesError, ProtocolError
from securefl.hazmat import aead, noise, shamir, signing
from securefl.hazmat.agreement import KeyPair, clamp
from securefl.hazmat.kdf import LABEL_PREFIX, derive_key, hkdf_sha256, kdf_info
from securefl.hazmat.prg import MaskExpander
from securefl.hazmat.randomness import DeterministicRandom
from securefl.protocol import derivation as d
from securefl.protocol import merkle
from securefl.protocol.config import Round, SecAggConfig, SecurityMode
from securefl.protocol.harary import HararyGraph, ring_order
from securefl.protocol.inmemory import Driver
from securefl.protocol.messages import AdvertiseKeys
from securefl.protocol.noise import NoisePlan
from securefl.wire import decode

GENERATOR_VERSION = "1"


def _rng(label: str) -> DeterministicRandom:
    return DeterministicRandom(hashlib.sha256(f"securefl vectors/{label}".encode()).digest())


def _seed(label: str) -> bytes:
    return hashlib.sha256(f"securefl vectors/seed/{label}".encode()).digest()


def _file(algorithm: str, schema: str, header: list[str], notes: Mapping[str, Any],
          groups: list[dict[str, Any]]) -> dict[str, Any]:
    tc_id = 0
    for group in groups:
        for test in group["tests"]:
            tc_id += 1
            test["tcId"] = tc_id
            # tcId first, for readability
            items = sorted(test.items(), key=lambda kv: kv[0] != "tcId")
            test.clear()
            test.update(items)
    return {
        "algorithm": algorithm,
        "protocol": PROTOCOL_NAME,
        "generatorVersion": GENERATOR_VERSION,
        "schema": schema,
        "numberOfTests": tc_id,
        "header": header,
        "notes": dict(notes),
        "testGroups": groups,
    }


def _note(bug_type: str, description: str) -> dict[str, str]:
    return {"bugType": bug_type, "description": description}


# -- KDF ----------------------------------------------------------------------


def kdf_vectors() -> dict[str, Any]:
    """HKDF-SHA256 key derivation (SPEC.md section 4)."""
    rng = _rng("kdf")
    groups = []
    for label, ids_count in ((b"pairwise-mask", 2), (b"share-encryption", 2), (b"self-mask", 1)):
        tests = []
        id_sets = ([[1, 2], [17, 942], [5, 2**31 - 2]] if ids_count == 2
                   else [[1], [4242], [2**31 - 2]])
        for ids in id_sets:
            secret = rng.token_bytes(32)
            sid = rng.token_bytes(32)
            key = derive_key(secret, label, version=1, session_id=sid, client_ids=ids)
            info = kdf_info(LABEL_PREFIX + label, 1, sid, ids)
            tests.append({"comment": "", "flags": [], "secret": secret.hex(),
                          "sessionId": sid.hex(), "clientIds": ids, "version": 1,
                          "info": info.hex(), "key": key.hex(), "result": "valid"})
        secret, sid = rng.token_bytes(32), rng.token_bytes(32)
        ids = [3, 7][:ids_count]
        right = dict(secret=secret.hex(), sessionId=sid.hex(), clientIds=ids, version=1)
        wrong_keys = {
            "WrongVersion": derive_key(secret, label, version=0, session_id=sid, client_ids=ids),
            "NoLengthPrefix": hkdf_sha256(secret, None, LABEL_PREFIX + label + struct.pack(">I", 1)
                                          + sid + b"".join(struct.pack(">I", c) for c in ids), 32),
            "WrongLabel": derive_key(secret, label + b"s", version=1, session_id=sid,
                                     client_ids=ids),
        }
        if ids_count == 2:
            wrong_keys["UnsortedIds"] = derive_key(secret, label, version=1, session_id=sid,
                                                   client_ids=ids[::-1])
        for flag, key in wrong_keys.items():
            tests.append({"comment": f"key derived with a {flag} mistake", "flags": [flag],
                          **right, "info": kdf_info(LABEL_PREFIX + label, 1, sid, ids).hex(),
                          "key": key.hex(), "result": "invalid"})
        groups.append({"type": "KdfTest", "label": label.decode(), "tests": tests})
    notes = {
        "WrongVersion": _note("MISSING_DOMAIN_SEPARATION", "The key was derived with protocol"
                              " version 0: the version must be bound into every key."),
        "NoLengthPrefix": _note("AMBIGUOUS_ENCODING", "The info string concatenates fields"
                                " without their length prefixes, so distinct inputs can collide."),
        "WrongLabel": _note("MISSING_DOMAIN_SEPARATION", "The key was derived for another"
                            " purpose label."),
        "UnsortedIds": _note("WRONG_BYTE_ORDER", "The pair of client ids was not sorted"
                             " ascending, so the two ends would derive different keys."),
    }
    return _file("HKDF-SHA256 (securefl/secagg/v1 key derivation)", "kdf_test.schema.json",
                 ["Keys derived by HKDF-SHA256 with an empty salt and the info layout of"
                  " SPEC.md 4.1; the label in each group is given without its"
                  " 'securefl/secagg/' prefix.", "valid: derive(inputs) == key; invalid:"
                  " the key was derived with the flagged mistake and must not be produced."],
                 notes, groups)


# -- PRG ----------------------------------------------------------------------


def prg_vectors() -> dict[str, Any]:
    """AES-256-CTR mask PRG mapped to Z_{2^k} (SPEC.md section 5)."""
    rng = _rng("prg")
    groups = []
    for bits in (1, 8, 12, 16, 31, 32, 33, 64):
        tests = []
        for length in (1, 5, 9):
            key = rng.token_bytes(32)
            expander = MaskExpander(length, bits)
            mask = expander.expand(key)
            flags = ["NonByteWidth"] if bits % 8 else []
            tests.append({"comment": "", "flags": flags, "key": key.hex(), "length": length,
                          "mask": [str(int(x)) for x in mask],
                          "maskBytes": mask.astype(f"<u{expander.dtype.itemsize}").tobytes().hex(),
                          "result": "valid"})
        groups.append({"type": "PrgTest", "bits": bits, "elementBytes":
                       MaskExpander(1, bits).dtype.itemsize, "tests": tests})
    bad = []
    for size in (16, 31, 33):
        bad.append({"comment": f"a {size}-byte key", "flags": ["WrongKeySize"],
                    "key": rng.token_bytes(size).hex(), "length": 4, "mask": [],
                    "maskBytes": "", "result": "invalid"})
    key = rng.token_bytes(32)
    seed32 = int.from_bytes(key[:4], "little")
    weak = np.random.RandomState(seed32).randint(0, 2**31, size=4, dtype=np.int64)
    bad.append({"comment": "a mask from a non-cryptographic generator seeded with 32 bits"
                " of the key (the Flower SecAgg+ design)", "flags": ["Seeded32BitMask"],
                "key": key.hex(), "length": 4, "mask": [str(int(x)) for x in weak],
                "maskBytes": weak.astype("<u4").tobytes().hex(), "result": "invalid"})
    groups.append({"type": "PrgTest", "bits": 32, "elementBytes": 4, "tests": bad})
    notes = {
        "NonByteWidth": _note("EDGE_CASE", "k is not a multiple of 8: every word is reduced"
                              " mod 2^k after it is read."),
        "WrongKeySize": _note("MISSING_CHECK", "The PRG takes exactly a 32-byte key; anything"
                              " else must be rejected."),
        "Seeded32BitMask": _note("WEAK_PRG", "Masks drawn from a 32-bit seeded generator can"
                                 " be brute-forced in 2^32 steps; the expected mask is the"
                                 " AES-256-CTR one, never this."),
    }
    return _file("AES-256-CTR PRG to Z_2^k (securefl/secagg/v1 masks)", "prg_test.schema.json",
                 ["mask[i] = little-endian word i (of elementBytes bytes) of the AES-256-CTR"
                  " keystream (zero initial counter block) mod 2^bits.  mask is given as"
                  " decimal strings, maskBytes packed at the native width.",
                  "invalid: the key must be rejected, or the given mask must not be produced."],
                 notes, groups)


# -- Shamir -------------------------------------------------------------------


def shamir_vectors() -> dict[str, Any]:
    """Shamir sharing over GF(2^31 - 1) (SPEC.md section 6)."""
    rng = _rng("shamir")
    share_tests = []
    for threshold, holders in ((1, [1, 2]), (2, [1, 2, 3]), (3, [2, 5, 7, 11, 13])):
        secret = rng.token_bytes(32)
        coeffs = [int(x) for x in np.frombuffer(rng.token_bytes(4 * 16 * (threshold - 1)),
                                                dtype="<u4") & 0x7FFFFFFF]
        raw = np.asarray(coeffs, dtype="<u4").tobytes()
        shares = shamir.split([secret], holders, threshold, _Fixed(raw))
        share_tests.append({"comment": "", "flags": [], "secret": secret.hex(),
                            "threshold": threshold, "holders": holders,
                            "coefficients": coeffs,
                            "shares": [shamir.share_to_bytes(shares[i, 0]).hex()
                                       for i in range(len(holders))], "result": "valid"})
    rec_tests: list[dict[str, Any]] = []
    secret = rng.token_bytes(32)
    holders = [3, 4, 6, 9, 10]
    threshold = 3
    split = shamir.split([secret], holders, threshold, rng)
    shares = [shamir.share_to_bytes(split[i, 0]) for i in range(len(holders))]

    def rec(comment: str, flags: list[str], hs: list[int], ss: list[bytes], result: str) -> None:
        rec_tests.append({"comment": comment, "flags": flags, "threshold": threshold,
                          "holders": hs, "shares": [s.hex() for s in ss],
                          "secret": secret.hex() if result == "valid" else "",
                          "result": result})

    rec("exactly t shares", [], holders[:3], shares[:3], "valid")
    rec("all n shares, every extra share checked", ["ExtraShares"], holders, shares, "valid")
    rec("shares in another holder order", ["ExtraShares"], holders[::-1], shares[::-1], "valid")
    altered = bytearray(shares[4])
    altered[0] ^= 1
    rec("n shares, the last one altered", ["InconsistentShares"], holders,
        [*shares[:4], bytes(altered)], "invalid")
    altered = bytearray(shares[1])
    altered[5] ^= 0x40
    rec("t shares, one altered: the result is not a 16-bit limb vector", ["NotASecret"],
        holders[:3], [shares[0], bytes(altered), shares[2]], "invalid")
    rec("one share of 65 bytes", ["WrongShareSize"], holders[:3],
        [shares[0], shares[1] + b"\0", shares[2]], "invalid")
    rec("one share of 63 bytes", ["WrongShareSize"], holders[:3],
        [shares[0], shares[1][:-1], shares[2]], "invalid")
    not_field = bytearray(shares[2])
    not_field[0:4] = (2**31 - 1).to_bytes(4, "little")
    rec("an element equal to p", ["ElementNotInField"], holders[:3],
        [shares[0], shares[1], bytes(not_field)], "invalid")
    rec("fewer than t shares", ["TooFewShares"], holders[:2], shares[:2], "invalid")
    rec("the same holder twice", ["DuplicateHolder"], [holders[0], holders[0], holders[1]],
        [shares[0], shares[0], shares[1]], "invalid")
    for test in rec_tests:  # the generator checks its own claims
        try:
            got = shamir.reconstruct(test["holders"], [bytes.fromhex(s) for s in test["shares"]],
                                     threshold, DeterministicRandom(bytes(32)))
            assert test["result"] == "valid" and got == secret, test["comment"]
        except (InconsistentSharesError, ValueError):
            assert test["result"] == "invalid", test["comment"]
    notes = {
        "ExtraShares": _note("FUNCTIONALITY", "More than t shares: every share beyond the"
                             " first t must lie on the same polynomial."),
        "InconsistentShares": _note("MISSING_CHECK", "A share beyond the first t disagrees:"
                                    " reconstruction must fail rather than return a value."),
        "NotASecret": _note("MISSING_CHECK", "Exactly t shares, one wrong so that some"
                            " reconstructed limb is not below 2^16, which must be rejected."
                            "  (A wrong share that keeps every limb below 2^16 cannot be"
                            " caught from t shares alone; the protocol checks the owner's"
                            " commitment instead, SPEC.md [R4-11].)"),
        "WrongShareSize": _note("MISSING_CHECK", "A share is exactly 64 bytes."),
        "ElementNotInField": _note("MISSING_CHECK", "Every share element must be below p."),
        "TooFewShares": _note("MISSING_CHECK", "Fewer than t shares must be rejected."),
        "DuplicateHolder": _note("MISSING_CHECK", "Evaluation points must be distinct."),
    }
    return _file("Shamir t-of-n over GF(2^31-1), 16-bit limbs", "shamir_test.schema.json",
                 ["A 32-byte secret is 16 little-endian 16-bit limbs, each shared with its own"
                  " polynomial; a share is 16 little-endian uint32 evaluations at the holder's"
                  " id.  coefficients[j*16 + l] is the coefficient of x^(j+1) for limb l."],
                 notes, [{"type": "ShamirShareTest", "tests": share_tests},
                         {"type": "ShamirReconstructTest", "tests": rec_tests}])


class _Fixed:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def token_bytes(self, n: int) -> bytes:
        out, self._data = self._data[:n], self._data[n:]
        assert len(out) == n
        return out


# -- AEAD ---------------------------------------------------------------------


def aead_vectors() -> dict[str, Any]:
    """AES-256-GCM share encryption with bound associated data (SPEC.md section 7)."""
    rng = _rng("aead")
    tests = []
    for sender, recipient in ((1, 2), (2, 1), (7, 300)):
        key, sid, plain = rng.token_bytes(32), rng.token_bytes(32), rng.token_bytes(128)
        nonce = d.share_nonce(sender, recipient)
        ad = d.share_associated_data(sid, sender, recipient)
        ct = aead.encrypt(key, nonce, plain, ad)
        base = {"key": key.hex(), "sessionId": sid.hex(), "sender": sender,
                "recipient": recipient, "plaintext": plain.hex()}
        tests.append({"comment": "", "flags": [], **base, "nonce": nonce.hex(), "aad": ad.hex(),
                      "ciphertext": ct.hex(), "result": "valid"})
        if (sender, recipient) != (1, 2):
            continue
        other_sid = rng.token_bytes(32)
        wrong_version = (d.PREFIX + b"shares" + struct.pack(">I", 2) + sid
                         + struct.pack(">II", sender, recipient))
        cases = [
            ("associated data with sender and recipient swapped", ["SwappedDirection"], nonce,
             d.share_associated_data(sid, recipient, sender), ct),
            ("associated data of another session", ["WrongSessionId"], nonce,
             d.share_associated_data(other_sid, sender, recipient), ct),
            ("associated data with another protocol version", ["WrongVersion"], nonce,
             wrong_version, ct),
            ("nonce of the other direction", ["WrongNonce"], d.share_nonce(recipient, sender),
             ad, ct),
            ("a ciphertext bit flipped", ["ModifiedCiphertext"], nonce, ad,
             bytes([ct[0] ^ 1]) + ct[1:]),
            ("a tag bit flipped", ["ModifiedTag"], nonce, ad, ct[:-1] + bytes([ct[-1] ^ 0x80])),
            ("the tag truncated to 12 bytes", ["TruncatedCiphertext"], nonce, ad, ct[:-4]),
        ]
        for comment, flags, n, a, c in cases:
            tests.append({"comment": comment, "flags": flags, **base, "nonce": n.hex(),
                          "aad": a.hex(), "ciphertext": c.hex(), "result": "invalid"})
    notes = {
        "SwappedDirection": _note("MISSING_DOMAIN_SEPARATION", "Sender and recipient are bound"
                                  " in the associated data: a ciphertext cannot be redirected."),
        "WrongSessionId": _note("REPLAY", "The session id is bound: a ciphertext from another"
                                " session must not authenticate."),
        "WrongVersion": _note("MISSING_DOMAIN_SEPARATION", "The protocol version is bound."),
        "WrongNonce": _note("MISSING_CHECK", "The nonce is 4 zero bytes, sender, recipient."),
        "ModifiedCiphertext": _note("AUTHENTICATION", "Tampering must be detected."),
        "ModifiedTag": _note("AUTHENTICATION", "Tampering must be detected."),
        "TruncatedCiphertext": _note("AUTHENTICATION", "The tag is 16 bytes, never shortened."),
    }
    return _file("AES-256-GCM share encryption", "aead_test.schema.json",
                 ["nonce = 00000000 || sender || recipient (uint32 big-endian); aad ="
                  " 'securefl/secagg/v1/shares' || version (uint32 BE) || session id ||"
                  " sender || recipient; plaintext = key share (64 bytes) || seed share"
                  " (64 bytes).  invalid: opening with the given nonce and aad must fail."],
                 notes, [{"type": "AeadTest", "keySize": 256, "ivSize": 96, "tagSize": 128,
                          "tests": tests}])


# -- neighbour graphs -----------------------------------------------------------


def _harary_neighbours(order: list[int], degree: int) -> dict[str, list[int]]:
    half = degree // 2
    ext = order[-half:] + order + order[:half]
    return {str(c): sorted(ext[p: p + half] + ext[p + half + 1: p + 2 * half + 1])
            for p, c in sorted(enumerate(order), key=lambda pc: pc[1])}


def graph_vectors() -> dict[str, Any]:
    """The SecAgg+ Harary graph keyed by the session id (SPEC.md 3.5)."""
    rng = _rng("graph")
    groups = []
    for degree, roster in ((2, [1, 2, 3, 4, 5]), (4, [2, 3, 5, 7, 11, 13, 17, 19, 23]),
                           (6, list(range(1, 21)))):
        tests = []
        for _ in range(2):
            sid = rng.token_bytes(32)
            graph = HararyGraph(degree)
            order = list(ring_order(roster, sid))
            neighbours = {str(c): sorted(v) for c, v in graph.neighbours(roster, sid).items()}
            assert neighbours == _harary_neighbours(order, degree)
            tests.append({"comment": "", "flags": [], "sessionId": sid.hex(), "roster": roster,
                          "ringOrder": order, "neighbours": neighbours, "result": "valid"})
        sid = rng.token_bytes(32)
        tests.append({"comment": "the ring left in ascending id order", "flags": ["SortedRing"],
                      "sessionId": sid.hex(), "roster": roster, "ringOrder": roster,
                      "neighbours": _harary_neighbours(roster, degree), "result": "invalid"})
        groups.append({"type": "HararyGraphTest", "graph": f"harary:k={degree}",
                       "tests": tests})
    small = [4, 8, 15]
    sid = rng.token_bytes(32)
    groups.append({"type": "HararyGraphTest", "graph": "harary:k=4", "tests": [
        {"comment": "a roster of at most k+1 clients is the complete graph",
         "flags": ["SmallRoster"], "sessionId": sid.hex(), "roster": small,
         "ringOrder": list(ring_order(small, sid)),
         "neighbours": {str(c): [d for d in small if d != c] for c in small},
         "result": "valid"}]})
    notes = {
        "SortedRing": _note("PREDICTABLE_GRAPH", "Without the session-keyed permutation the"
                            " neighbourhoods are predictable before the keys are advertised,"
                            " so a malicious server could place victims among its clients."),
        "SmallRoster": _note("EDGE_CASE", "With at most k+1 clients in the roster every"
                             " client neighbours every other."),
    }
    return _file("SecAgg+ Harary graph over a session-keyed ring", "graph_test.schema.json",
                 ["ringOrder is the Fisher-Yates shuffle of the sorted roster keyed by"
                  " HKDF-SHA256(session id, info 'securefl/secagg/v1/graph-permutation');"
                  " each client neighbours the k/2 clients before and after it on the ring."
                  "  invalid: the stated neighbours must not be produced."],
                 notes, groups)


def merkle_vectors() -> dict[str, Any]:
    """The Merkle commitment of sparse roster delivery (SPEC.md 10.1a): leaf
    hashes of roster entries, and RFC 9162 inclusion proofs, valid and not."""
    rng = _rng("merkle")
    leaf_tests = []
    for components in (0, 2):
        entry = AdvertiseKeys(int.from_bytes(rng.token_bytes(3), "big") + 1,
                              rng.token_bytes(32), rng.token_bytes(32), None,
                              rng.token_bytes(32), tuple(rng.token_bytes(32)
                                                         for _ in range(components)))
        leaf_tests.append({"comment": f"{components} noise commitments", "flags": [],
                           "sender": entry.sender, "encryptionKey": entry.encryption_key.hex(),
                           "maskingKey": entry.masking_key.hex(),
                           "seedCommitment": entry.seed_commitment.hex(),
                           "noiseCommitments": [c.hex() for c in entry.noise_commitments],
                           "leaf": merkle.leaf_hash(entry).hex(), "result": "valid"})
    plain = AdvertiseKeys(7, bytes(32), bytes(32), None, bytes(32))
    unlabelled = hashlib.sha256(b"\0" + struct.pack(">I", 7) + bytes(96)).digest()
    leaf_tests.append({"comment": "RFC 6962's 0x00 leaf prefix instead of the roster-leaf label",
                       "flags": ["WrongLabel"], "sender": 7, "encryptionKey": bytes(32).hex(),
                       "maskingKey": bytes(32).hex(), "seedCommitment": bytes(32).hex(),
                       "noiseCommitments": [], "leaf": unlabelled.hex(), "result": "invalid"})
    assert merkle.leaf_hash(plain) != unlabelled
    proof_tests = []
    for size in (1, 2, 3, 5, 8, 13):
        leaves = [rng.token_bytes(32) for _ in range(size)]
        tree = merkle.RosterTree(leaves)
        for index in sorted({0, size // 2, size - 1}):
            proof_tests.append(_proof_test("", [], leaves[index], index, size,
                                           tree.proof(index), tree.root, "valid"))
        index = size // 2
        path = list(tree.proof(index))
        bad: list[tuple[str, str, int, int, list[bytes], bytes]] = [
            ("index equal to the size", "IndexOutOfRange", size, size, path, leaves[index]),
            ("one more hash in the path", "PathLength", index, size,
             [*path, leaves[0]], leaves[index])]
        if path:
            flipped = [bytes([path[0][0] ^ 1]) + path[0][1:], *path[1:]]
            bad += [("one bit of the path flipped", "BitFlip", index, size, flipped,
                     leaves[index]),
                    ("the last hash of the path left out", "PathLength", index, size,
                     path[:-1], leaves[index])]
        if size > 1:
            other = (index + 1) % size
            bad.append(("the leaf at another index", "WrongIndex", other, size, path,
                        leaves[index]))
        for comment, flag, i, n, p, leaf in bad:
            assert not merkle.verify_inclusion(leaf, i, n, p, tree.root)
            proof_tests.append(_proof_test(comment, [flag], leaf, i, n, p, tree.root,
                                           "invalid"))
    notes = {
        "WrongLabel": _note("DOMAIN_SEPARATION", "Leaves and inner nodes are hashed under"
                            " their own labels, so neither can be read as the other."),
        "IndexOutOfRange": _note("MISSING_CHECK", "RFC 9162 2.1.3.2 step 1: an index at or"
                                 " past the tree size fails."),
        "PathLength": _note("MISSING_CHECK", "A path longer or shorter than the leaf's path"
                            " fails (sn must reach 0 exactly when the path ends)."),
        "BitFlip": _note("MODIFIED_PROOF", "Any change of a path hash fails."),
        "WrongIndex": _note("WRONG_POSITION", "A leaf's proof does not verify at another"
                            " index: the index is the sender's rank in the roster."),
    }
    return _file("Merkle commitment of a key roster (sparse roster delivery)",
                 "merkle_test.schema.json",
                 ["leaf = SHA-256('securefl/secagg/v1/roster-leaf' || u32(sender) || c_pk ||"
                  " s_pk || seed_commitment || noise commitments); node = SHA-256("
                  "'securefl/secagg/v1/roster-node' || left || right); the tree and the"
                  " inclusion proofs are RFC 9162's (2.1.1, 2.1.3).  valid: the leaf hash"
                  " MUST be produced, the proof MUST verify; invalid: it MUST NOT."],
                 notes, [{"type": "MerkleLeafTest", "tests": leaf_tests},
                         {"type": "MerkleInclusionTest", "tests": proof_tests}])


def _proof_test(comment: str, flags: list[str], leaf: bytes, index: int, size: int,
                path: Any, root: bytes, result: str) -> dict[str, Any]:
    return {"comment": comment, "flags": flags, "leaf": leaf.hex(), "index": index,
            "treeSize": size, "inclusionPath": [h.hex() for h in path], "root": root.hex(),
            "result": result}


# -- whole rounds -------------------------------------------------------------


def _identity(label: str, cid: int) -> tuple[bytes, bytes]:
    private = _seed(f"{label}/identity/{cid}")
    return private, signing.public_bytes(Ed25519PrivateKey.from_private_bytes(private))


class _Recorder(Driver):
    """The in-memory driver over the byte adapters, recording every operation
    in order: a client's start and each answer as made, each server receive
    (refused ones too) and each close.  A client that does not answer R0 is
    not recorded as started.  ``extra`` may inject refused operations before
    each close after R0 (it gets the state)."""

    server: SecureFLServer

    def __init__(self, config: SecAggConfig, server: SecureFLServer,
                 clients: Mapping[int, SecureFLClient], dropouts: Mapping[int, Round],
                 extra: Callable[[dict[str, Any]], None] | None) -> None:
        super().__init__(config, server, clients, dropouts=dropouts)
        self.ops: list[dict[str, Any]] = []
        self.sent_by: dict[int, list[bytes]] = {c: [] for c in config.ids}
        self.extra = extra
        self.state: dict[str, Any] = {"receive": self._receive, "sent": self.sent_by}

    def to_server(self, rnd: Round, cid: int, message: Any) -> Any:
        if rnd is Round.ADVERTISE_KEYS:
            self.sent_by[cid].append(message)
            self.ops.append({"op": "client_start", "client": cid, "output": message.hex(),
                             "success": True})
        return message

    def client_handle(self, rnd: Round, cid: int, message: Any) -> Any:
        reply = super().client_handle(rnd, cid, message)
        self.sent_by[cid].append(reply)
        self.ops.append({"op": "client_handle", "client": cid, "round": rnd.name,
                         "input": message.hex(), "output": reply.hex(), "success": True})
        return reply

    def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
        self._receive(cid, message)

    def _receive(self, cid: int, data: bytes) -> None:
        op: dict[str, Any] = {"op": "server_receive", "client": cid, "message": data.hex()}
        try:
            self.server.receive(data)
            op["success"] = True
        except ProtocolError as exc:
            op["success"] = False
            op["error"] = {"rule": exc.rule.value}
        self.ops.append(op)

    def server_close(self, rnd: Round) -> Any:
        if rnd is not Round.ADVERTISE_KEYS and self.extra is not None:
            self.state["round"] = rnd
            self.extra(self.state)
        try:
            out = super().server_close(rnd)
        except AbortError as exc:
            self.ops.append({"op": "server_close_round", "round": rnd.name, "success": False,
                             "error": {"abort": True, "needed": exc.needed,
                                       "available": exc.available}, "outputs": []})
            raise
        self.ops.append({"op": "server_close_round", "round": rnd.name, "success": True,
                         "outputs": [{"recipient": c, "message": m.hex()} for c, m in out]})
        return out

    def server_finished(self, out: Any) -> bool:
        return self.server.session.finished


def round_vector(name: str, description: str, config: SecAggConfig,
                 dropouts: Mapping[int, Round],
                 extra: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one whole round with fixed fake randomness and record every
    operation.  ``dropouts`` maps a client to the first round it does not
    answer.  ``extra`` may inject refused operations (it gets the state)."""
    gen = _rng(f"round/{name}/inputs")
    high = 1 << config.bits
    inputs = {c: [int.from_bytes(gen.token_bytes(8), "little") % high
                  for _ in range(config.vector_length)] for c in config.ids}
    identities = ({c: _identity(name, c) for c in config.ids}
                  if config.mode is SecurityMode.ACTIVE else {})
    pinned = {c: pub for c, (_, pub) in identities.items()}
    seeds = {c: _seed(f"{name}/client/{c}") for c in config.ids}
    server_seed = _seed(f"{name}/server")
    server = SecureFLServer(ServerSpec(config, pinned, server_seed))
    clients = {c: SecureFLClient(ClientSpec(config, c, tuple(inputs[c]),
                                            identities[c][0] if identities else None,
                                            pinned, seeds[c])) for c in config.ids}
    recorder = _Recorder(config, server, clients, dropouts, extra)
    result: dict[str, Any]
    try:
        recorder.run()
    except AbortError:
        assert recorder.round is not None
        result = {"aborted": True, "round": recorder.round.name}
    else:
        res = server.result()
        result = {"aborted": False, "survivors": list(res.survivors),
                  "total": [str(x) for x in res.total],
                  "statuses": {str(c): s for c, s in server.statuses().items()}}
        expected = [0] * config.vector_length
        for c in res.survivors:
            expected = [(a + b) % high for a, b in zip(expected, inputs[c], strict=True)]
        if config.noise is None:
            assert list(res.total) == expected, "generator self-check: wrong sum"
        else:
            # the released noise is Sk(noise_variance): within 12 sigma of the sum
            result["noiseVariance"] = res.noise_variance
            result["noiseRemoved"] = [list(p) for p in res.noise_removed]
            sigma = (res.noise_variance or 0) ** 0.5
            assert all(min((a - b) % high, (b - a) % high) <= 12 * sigma
                       for a, b in zip(res.total, expected, strict=True)), \
                "generator self-check: the noise is not what the plan promises"
    ops, sent = recorder.ops, recorder.sent_by
    return {
        "name": name,
        "protocol": PROTOCOL_NAME,
        "generatorVersion": GENERATOR_VERSION,
        "schema": "round_test.schema.json",
        "description": description,
        "config": config_to_json(config),
        "randomness": {
            "algorithm": "AES-256-CTR keystream of the 32-byte seed, zero IV (SPEC.md 14.2)",
            "serverSeed": server_seed.hex(),
        },
        "dropouts": {str(c): r.name for c, r in sorted(dropouts.items())},
        "clients": [_client_record(config, c, inputs[c], seeds[c], identities.get(c),
                                   sent[c], dropouts) for c in config.ids],
        "operations": ops,
        "result": result,
    }


def _client_record(config: SecAggConfig, cid: int, vector: list[int], seed: bytes,
                   identity: tuple[bytes, bytes] | None, sent: list[bytes],
                   dropouts: Mapping[int, Round]) -> dict[str, Any]:
    rng = DeterministicRandom(seed)
    c_pair = KeyPair.from_private_bytes(rng.token_bytes(32))
    s_pair = KeyPair.from_private_bytes(clamp(rng.token_bytes(32)))  # [SSS-5]
    self_seed = rng.token_bytes(32)
    noise_seeds = [rng.token_bytes(32) for _ in range(config.noise_components)]  # [NZ-2]
    record: dict[str, Any] = {"id": cid, "input": [str(x) for x in vector],
                              "randomSeed": seed.hex()}
    if identity is not None:
        record["identityPrivateKey"], record["identityPublicKey"] = (identity[0].hex(),
                                                                     identity[1].hex())
    record["droppedAt"] = dropouts[cid].name if cid in dropouts else None
    if not sent:
        return record
    record.update({
        "encryptionPrivateKey": c_pair.private_bytes().hex(),
        "encryptionPublicKey": c_pair.public_bytes.hex(),
        "maskingPrivateKey": s_pair.private_bytes().hex(),
        "maskingPublicKey": s_pair.public_bytes.hex(),
        "selfMaskSeed": self_seed.hex(),
        "seedCommitment": d.seed_commitment(config.digest(), cid, self_seed).hex(),
    })
    if noise_seeds:
        record["noiseSeeds"] = [seed.hex() for seed in noise_seeds]
        record["noiseCommitments"] = [
            d.noise_seed_commitment(config.digest(), cid, j, seed).hex()
            for j, seed in enumerate(noise_seeds)]
    advert = decode(sent[0])
    assert advert.encryption_key == c_pair.public_bytes  # type: ignore[union-attr]
    assert advert.masking_key == s_pair.public_bytes  # type: ignore[union-attr]
    assert advert.seed_commitment.hex() == record["seedCommitment"]  # type: ignore[union-attr]
    if len(sent) < 2:
        return record
    shares_msg = decode(sent[1])
    sid = shares_msg.session_id  # type: ignore[union-attr]
    holders = sorted({*shares_msg.ciphertexts, cid})  # type: ignore[union-attr]
    split = shamir.split([s_pair.private_bytes(), self_seed, *noise_seeds], holders, config.t,
                         rng)
    record["shares"] = {
        str(h): {"keyShare": shamir.share_to_bytes(split[i, 0]).hex(),
                 "selfMaskSeedShare": shamir.share_to_bytes(split[i, 1]).hex(),
                 **({"noiseSeedShares": [shamir.share_to_bytes(split[i, 2 + j]).hex()
                                         for j in range(len(noise_seeds))]}
                    if noise_seeds else {})}
        for i, h in enumerate(holders)}
    record["ciphertexts"] = {str(h): ct.hex()
                             for h, ct in shares_msg.ciphertexts.items()}  # type: ignore[union-attr]
    record["selfMaskKey"] = d.self_mask_key(self_seed, sid, cid).hex()
    layout = config.noise_layout
    if layout is not None:
        # [NZ-4]: the base key is the client's next 32 random bytes (in R2), the
        # excess keys are derived from the committed seeds
        base_key = rng.token_bytes(32)
        excess_keys = [d.excess_noise_key(seed, sid, cid, j) for j, seed in enumerate(noise_seeds)]
        total = noise.skellam(layout.base, config.vector_length, base_key)
        for j, key in enumerate(excess_keys):
            total += noise.skellam(layout.excess[j], config.vector_length, key)
        record["baseNoiseKey"] = base_key.hex()
        record["excessNoiseKeys"] = [key.hex() for key in excess_keys]
        record["noise"] = [str(int(x)) for x in total]
    if len(sent) >= 3:
        masked = decode(sent[2])
        record["maskedInput"] = [str(int(x)) for x in masked.masked]  # type: ignore[union-attr]
    return record


def _late_and_duplicate(state: dict[str, Any]) -> None:
    """Inject refused operations into the dropout transcript."""
    if state["round"] is Round.SHARE_KEYS:
        state["receive"](1, state["sent"][1][0])  # its advertisement again: late
    if state["round"] is Round.MASKED_INPUT_COLLECTION:
        state["receive"](2, state["sent"][2][-1])  # its masked input again: duplicate


def round_vectors() -> dict[str, dict[str, Any]]:
    """Every whole-round transcript, by file stem."""
    semi = SecurityMode.SEMI_HONEST
    return {
        "round_semi_honest_no_dropout": round_vector(
            "semi-honest-no-dropout", "Three clients, threshold 2, 16-bit ring, nobody drops.",
            SecAggConfig(num_clients=3, vector_length=4, bits=16, threshold=2, mode=semi,
                         context=b"vectors: no dropout"), {}),
        "round_semi_honest_dropouts": round_vector(
            "semi-honest-dropouts",
            "Seven clients, threshold 3, 12-bit ring (2-byte words).  Client 7 never"
            " advertises, 6 advertises but never shares, 5 shares but sends no masked input"
            " (its pairwise masks are removed from its key share), 4 sends its masked input"
            " but never answers the unmasking request (still in the sum).  Also a late"
            " advertisement and a duplicate masked input, both refused.",
            SecAggConfig(num_clients=7, vector_length=5, bits=12, threshold=3, mode=semi,
                         context=b"vectors: dropouts"),
            {7: Round.ADVERTISE_KEYS, 6: Round.SHARE_KEYS, 5: Round.MASKED_INPUT_COLLECTION,
             4: Round.UNMASKING}, _late_and_duplicate),
        "round_semi_honest_abort": round_vector(
            "semi-honest-abort",
            "Four clients, threshold 3: two never send their masked input, so the server"
            " aborts when it closes the masked-input round and produces no result.",
            SecAggConfig(num_clients=4, vector_length=3, bits=32, threshold=3, mode=semi,
                         context=b"vectors: abort"),
            {3: Round.MASKED_INPUT_COLLECTION, 4: Round.MASKED_INPUT_COLLECTION}),
        "round_active_dropouts": round_vector(
            "active-dropouts",
            "Active mode, five clients, threshold 3, 64-bit ring: signed adverts, a"
            " consistency round.  Client 5 drops after sharing keys, client 4 after its"
            " masked input (it signs nothing, but its input is in the sum).",
            SecAggConfig(num_clients=5, vector_length=3, bits=64, threshold=3,
                         mode=SecurityMode.ACTIVE, client_ids=(2, 3, 5, 8, 13),
                         context=b"vectors: active"),
            {13: Round.MASKED_INPUT_COLLECTION, 8: Round.CONSISTENCY_CHECK}),
        "round_semi_honest_harary": round_vector(
            "semi-honest-harary",
            "SecAgg+ sparse graph: eight clients on a Harary graph of degree 4 (each masks"
            " with and shares to 4 neighbours), threshold 3, 10-bit ring.  Client 8 never"
            " shares, client 3 sends no masked input (its key is reconstructed from its"
            " neighbours' shares only).",
            SecAggConfig(num_clients=8, vector_length=4, bits=10, threshold=3, mode=semi,
                         graph=HararyGraph(4), context=b"vectors: harary"),
            {8: Round.SHARE_KEYS, 3: Round.MASKED_INPUT_COLLECTION}),
        "round_active_harary_merkle": round_vector(
            "active-harary-merkle",
            "Sparse roster delivery (SPEC.md [MRK-1]..[MRK-9]): active mode, seven clients"
            " on a Harary graph of degree 4, threshold 3, 16-bit ring, roster_delivery"
            " 'merkle'.  Each client receives a SparseKeyRoster: the id bitmap, the Merkle"
            " root of every entry, and only its own and its 4 neighbours' signed entries,"
            " each with its RFC 9162 inclusion proof; the session id binds the bitmap and"
            " the root.  Client 6 never advertises (the bitmap leaves it out).",
            SecAggConfig(num_clients=7, vector_length=2, bits=16, threshold=3,
                         mode=SecurityMode.ACTIVE, graph=HararyGraph(4),
                         context=b"vectors: merkle roster", roster_delivery="merkle"),
            {6: Round.ADVERTISE_KEYS}),
        "round_noise_active_dropouts": round_vector(
            "noise-active-dropouts",
            "Distributed Skellam noise (SPEC.md section 16): active mode (removable plans"
            " need it, [NZ-1b]), four clients, threshold 3, 20-bit ring, target variance 50"
            " with removable excess (tolerance 0.05, so J = 2 excess seeds a client,"
            " committed in R0 and shared in R1 beside the self-mask seed).  Client 4 drops"
            " after sharing keys: the server asks for, reconstructs and subtracts exactly"
            " the excess seeds the public rule selects for the three survivors (at the"
            " floor: component 1 of each), and releases noise of variance u B + kept"
            " excess.",
            SecAggConfig(num_clients=4, vector_length=3, bits=20, threshold=3,
                         mode=SecurityMode.ACTIVE, context=b"vectors: noise",
                         noise=NoisePlan(50.0, tolerance=0.05)),
            {4: Round.MASKED_INPUT_COLLECTION}),
    }


def generate(out_dir: Path) -> list[Path]:
    """Write every vector file into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"graph_test": graph_vectors(), "merkle_test": merkle_vectors(),
             "kdf_test": kdf_vectors(), "prg_test": prg_vectors(),
             "shamir_test": shamir_vectors(), "aead_test": aead_vectors(), **round_vectors()}
    paths = []
    for stem, data in files.items():
        path = out_dir / f"{stem}.json"
        path.write_text(dump(data))
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    """Entry point."""
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_VECTOR_DIR
    for path in generate(out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
