"""Identity keys for active mode: provision one Ed25519 key per node and a
pinned public-key file shared by the server and every node.

Active mode defends against a malicious server, so the keys must not come
from the server: every node is given, out of band (by whoever deploys the
SuperNodes), its own private key file and the same ``pinned.json``.  The
server gets ``pinned.json`` too and checks that each node registering as
client ``c`` presents the key pinned for ``c``.

Files (hex, one value per file, private files created mode 0600)::

    pinned.json          {"version": 1, "keys": {"1": "<64 hex>", ...}}
    client-1.key         <64 hex chars: the raw Ed25519 private key>

Command line: ``python -m securefl.flower.keys DIR 1 2 3 4 5``.

A node given a key file and ``pinned.json`` (node config
``securefl-identity-key`` and ``securefl-pinned-keys``) requires active mode
by default and refuses semi-honest setups (:mod:`securefl.flower.policy`);
a ServerApp given pinned keys runs active mode unless told otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from securefl.errors import ConfigurationError
from securefl.hazmat import signing
from securefl.hazmat.randomness import SystemRandom

__all__ = [
    "PINNED_FILENAME",
    "load_identity_key",
    "load_pinned_keys",
    "provision_identities",
]

PINNED_FILENAME = "pinned.json"


def _key_filename(client_id: int) -> str:
    return f"client-{client_id}.key"


def provision_identities(directory: str | os.PathLike[str],
                         client_ids: Iterable[int]) -> dict[int, Path]:
    """Create one private key file per client id and ``pinned.json``.

    Returns:
        client id -> path of its private key file (give each node its own).

    Raises:
        ConfigurationError: the directory already holds keys, or an id is
            out of range.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted({int(c) for c in client_ids})
    if not ids or ids[0] < 1:
        raise ConfigurationError("client ids must be positive")
    if (out / PINNED_FILENAME).exists():
        raise ConfigurationError(f"{out / PINNED_FILENAME} exists: refusing to overwrite keys")
    rng = SystemRandom()
    pinned: dict[str, str] = {}
    paths: dict[int, Path] = {}
    for cid in ids:
        key = signing.generate_identity(rng)
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        path = out / _key_filename(cid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(raw.hex() + "\n")
        pinned[str(cid)] = signing.public_bytes(key).hex()
        paths[cid] = path
    (out / PINNED_FILENAME).write_text(json.dumps({"version": 1, "keys": pinned}, indent=2,
                                                  allow_nan=False)
                                       + "\n")
    return paths


def load_identity_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a node's private identity key file.

    Raises:
        ConfigurationError: missing, unreadable or malformed file.
    """
    try:
        raw = bytes.fromhex(Path(path).read_text().strip())
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load identity key {path}: {exc}") from None


def load_pinned_keys(path: str | os.PathLike[str]) -> dict[int, Ed25519PublicKey]:
    """Read ``pinned.json``: client id -> pinned Ed25519 public key.

    Raises:
        ConfigurationError: missing or malformed file.
    """
    try:
        data = json.loads(Path(path).read_text())
        if data.get("version") != 1:
            raise ValueError(f"unsupported version {data.get('version')!r}")
        keys: Mapping[str, str] = data["keys"]
        return {int(c): signing.load_identity_public(bytes.fromhex(k)) for c, k in keys.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ConfigurationError(f"cannot load pinned keys {path}: {exc}") from None


def _main(argv: list[str]) -> int:  # pragma: no cover - thin CLI
    if len(argv) < 2:
        print("usage: python -m securefl.flower.keys DIR CLIENT_ID [CLIENT_ID ...]",
              file=sys.stderr)
        return 2
    paths = provision_identities(argv[0], [int(c) for c in argv[1:]])
    for cid, path in paths.items():
        print(f"client {cid}: {path}")
    print(f"pinned keys: {Path(argv[0]) / PINNED_FILENAME}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main(sys.argv[1:]))
