"""Low-level primitives.  Everything here comes from ``cryptography`` or is
exact integer arithmetic; nothing here knows about rounds or clients.

Each primitive lives in one small typed module:

* :mod:`.randomness`  - the injectable randomness source (OS CSPRNG by default)
* :mod:`.kdf`         - HKDF-SHA256 with domain separation
* :mod:`.agreement`   - X25519 key pairs and exchange
* :mod:`.prg`         - AES-256-CTR mask PRG into Z_{2^k}, into reused buffers
* :mod:`.noise`       - Poisson / Skellam samplers keyed by AES-256-CTR (DP noise)
* :mod:`.aead`        - AES-256-GCM with bound associated data
* :mod:`.shamir`      - vectorised t-of-n Shamir sharing over GF(2^31 - 1)
* :mod:`.signing`     - Ed25519 identity keys
"""
