"""Vectorised Shamir t-of-n secret sharing of 32-byte secrets.

Field and encoding (normative, see the protocol spec):

* the field is GF(p) with the Mersenne prime p = 2^31 - 1;
* a 32-byte secret is split into 16 little-endian 16-bit limbs; each limb is
  shared independently with its own random polynomial of degree t - 1 whose
  constant term is the limb;
* the evaluation point of a holder is its client id (1 <= id < p);
* a share is the 16 evaluations, each a little-endian uint32: 64 bytes.

Because limbs are 16-bit while the field holds 31 bits, a reconstruction from
wrong shares lands outside 0..65535 in some limb with overwhelming
probability, so even exactly t shares are checked; with more than t shares,
every extra share is checked against the interpolated polynomial (by a random
linear combination of all limbs, which catches any inconsistency except with
probability about 2^-62).

Everything is numpy ``uint64`` arithmetic with products below 2^62: sharing
two secrets to 1000 holders takes milliseconds, not seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from securefl.errors import ConfigurationError, InconsistentSharesError
from securefl.hazmat.randomness import RandomSource

PRIME = 2**31 - 1
LIMBS = 16
SHARE_BYTES = 4 * LIMBS
SECRET_BYTES = 32
_P = np.uint64(PRIME)
_CHECKS = 2
_SMALL = 4096  # t * (holders) below which Lagrange coefficients use Python ints


def _mod(a: np.ndarray) -> np.ndarray:
    return np.remainder(a, _P, out=a)


def _powmod(base: np.ndarray, exponent: int) -> np.ndarray:
    """Element-wise ``base ** exponent mod p`` (square and multiply)."""
    result = np.ones_like(base, dtype=np.uint64)
    b = base.astype(np.uint64) % _P
    e = exponent
    while e:
        if e & 1:
            result = _mod(result * b)
        b = _mod(b * b)
        e >>= 1
    return result


def _inverse(a: np.ndarray) -> np.ndarray:
    """Element-wise inverse mod p (Fermat); ``a`` must be non-zero mod p."""
    return _powmod(a, PRIME - 2)


def _prod_mod(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Product mod p along ``axis`` by pairwise halving (log depth)."""
    a = np.moveaxis(np.asarray(a, dtype=np.uint64), axis, -1)
    while a.shape[-1] > 1:
        if a.shape[-1] % 2:
            a = np.concatenate([a, np.ones((*a.shape[:-1], 1), dtype=np.uint64)], axis=-1)
        a = _mod(a[..., 0::2] * a[..., 1::2])
    return a[..., 0]


def _check_points(xs: Sequence[int]) -> np.ndarray:
    arr = np.asarray(list(xs), dtype=np.int64)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigurationError("need at least one evaluation point")
    if np.any(arr < 1) or np.any(arr >= PRIME):
        raise ConfigurationError(f"evaluation points must be in 1..{PRIME - 1}")
    if np.unique(arr).size != arr.size:
        raise ConfigurationError("evaluation points must be distinct")
    return arr.astype(np.uint64)


def secrets_to_limbs(secrets: Sequence[bytes]) -> np.ndarray:
    """``(S, 16)`` uint64 limbs of S 32-byte secrets."""
    for s in secrets:
        if len(s) != SECRET_BYTES:
            raise ConfigurationError("Shamir secrets are 32 bytes")
    raw = np.frombuffer(b"".join(secrets), dtype="<u2").reshape(len(secrets), LIMBS)
    return raw.astype(np.uint64)


def split(
    secrets: Sequence[bytes], holders: Sequence[int], threshold: int, rng: RandomSource
) -> np.ndarray:
    """Share every secret t-of-len(holders).

    Returns:
        ``(H, S, 16)`` uint32 array: ``out[h, s]`` is holder ``holders[h]``'s
        share of ``secrets[s]`` (serialise with :func:`share_to_bytes`).

    Raises:
        ConfigurationError: threshold out of 1..len(holders), bad points or
            secrets that are not 32 bytes.
    """
    xs = _check_points(holders)
    if not 1 <= threshold <= xs.size:
        raise ConfigurationError(f"threshold must be in 1..{xs.size}, got {threshold}")
    limbs = secrets_to_limbs(secrets).reshape(-1)  # (S*16,)
    width = limbs.size
    coeffs = _random_field_elements((threshold - 1) * width, rng).reshape(threshold - 1, width)
    x = xs.reshape(-1, 1)
    if threshold == 1:
        acc = np.broadcast_to(limbs, (xs.size, width)).copy()
    else:
        acc = np.broadcast_to(coeffs[-1], (xs.size, width)).copy()
        for j in range(threshold - 3, -1, -1):
            acc *= x
            acc += coeffs[j]
            _mod(acc)
        acc *= x
        acc += limbs
        _mod(acc)
    return acc.astype(np.uint32).reshape(xs.size, len(secrets), LIMBS)


def _random_field_elements(count: int, rng: RandomSource) -> np.ndarray:
    """``count`` uniform elements of GF(p) by rejection sampling 31-bit words."""
    out = np.frombuffer(rng.token_bytes(4 * count), dtype="<u4").astype(np.uint64) & _P
    bad = np.flatnonzero(out == _P)
    while bad.size:  # probability 2^-31 per element
        fresh = np.frombuffer(rng.token_bytes(4 * bad.size), dtype="<u4").astype(np.uint64) & _P
        out[bad] = fresh
        bad = bad[fresh == _P]
    return out


def share_to_bytes(share: np.ndarray) -> bytes:
    """Serialise one share (16 field elements) as 64 little-endian bytes."""
    return np.asarray(share, dtype="<u4").tobytes()


def share_from_bytes(raw: bytes) -> np.ndarray:
    """Parse a 64-byte share.

    Raises:
        InconsistentSharesError: wrong length or an element not below p.
    """
    if len(raw) != SHARE_BYTES:
        raise InconsistentSharesError(f"a share is {SHARE_BYTES} bytes, got {len(raw)}")
    arr = np.frombuffer(raw, dtype="<u4").astype(np.uint32)
    if np.any(arr >= PRIME):
        raise InconsistentSharesError("share element is not a field element")
    return arr


def check_shares(raws: Sequence[bytes]) -> None:
    """Check many serialised shares at once (lengths and field range).

    Raises:
        InconsistentSharesError: a share of the wrong length or with an
            element not below p.
    """
    for raw in raws:
        if len(raw) != SHARE_BYTES:
            raise InconsistentSharesError(f"a share is {SHARE_BYTES} bytes, got {len(raw)}")
    if raws:
        arr = np.frombuffer(b"".join(raws), dtype="<u4")
        if int(arr.max()) >= PRIME:
            raise InconsistentSharesError("share element is not a field element")


class Reconstructor:
    """Reconstruction for one fixed set of holders; the Lagrange coefficients
    are computed once and reused for every secret.

    Args:
        holders: the evaluation points of the shares that will be supplied,
            in the order they will be supplied (at least ``threshold``).
        threshold: t.
    """

    def __init__(self, holders: Sequence[int], threshold: int) -> None:
        xs = _check_points(holders)
        if threshold < 1:
            raise ConfigurationError("threshold must be positive")
        if xs.size < threshold:
            raise ConfigurationError(
                f"need at least {threshold} shares to reconstruct, got {xs.size}"
            )
        self.threshold = threshold
        self.holders = tuple(int(x) for x in xs)
        base, extra = xs[:threshold], xs[threshold:]
        if threshold * (threshold + extra.size) <= _SMALL:
            self._lam0, self._lam_extra = _lagrange_small([int(x) for x in base],
                                                          [int(x) for x in extra])
            return
        # denominators d_i = prod_{j != i} (x_i - x_j)
        diff = (base.reshape(-1, 1).astype(np.int64) - base.reshape(1, -1).astype(np.int64))
        diff = np.mod(diff, PRIME).astype(np.uint64)
        np.fill_diagonal(diff, 1)
        inv_den = _inverse(_prod_mod(diff, axis=1))
        # at zero: lambda_i = prod_{j != i} (0 - x_j) / d_i
        neg = np.mod(-base.astype(np.int64), PRIME).astype(np.uint64)
        num_all = _prod_mod(neg)  # prod_j (0 - x_j)
        num = _mod(num_all * _inverse(neg))  # divide out the own factor
        self._lam0 = _mod(num * inv_den)
        # at every extra point x_e: lambda_i(x_e) = prod_j (x_e - x_j) / ((x_e - x_i) d_i)
        if extra.size:
            d = np.mod(extra.reshape(-1, 1).astype(np.int64) - base.reshape(1, -1).astype(np.int64),
                       PRIME).astype(np.uint64)
            full = _prod_mod(d, axis=1).reshape(-1, 1)
            self._lam_extra = _mod(_mod(full * _inverse(d)) * inv_den.reshape(1, -1))
        else:
            self._lam_extra = np.zeros((0, threshold), dtype=np.uint64)

    def reconstruct(self, shares: np.ndarray, rng: RandomSource) -> list[bytes]:
        """Reconstruct every secret.

        Args:
            shares: ``(H, S, 16)`` shares in holder order (``H`` = number of
                holders given to the constructor).
            rng: randomness for the consistency check of extra shares.

        Returns:
            the S 32-byte secrets.

        Raises:
            InconsistentSharesError: the shares do not lie on one polynomial
                of degree t-1, or reconstruct to a value that is not a secret.
        """
        arr = np.asarray(shares)
        if arr.ndim != 3 or arr.shape[0] != len(self.holders) or arr.shape[2] != LIMBS:
            raise ConfigurationError(
                f"shares must have shape ({len(self.holders)}, S, {LIMBS}), got {arr.shape}"
            )
        if np.any(arr >= PRIME):
            raise InconsistentSharesError("share element is not a field element")
        num_secrets = arr.shape[1]
        flat = arr.reshape(arr.shape[0], -1).astype(np.uint64)
        t = self.threshold
        limbs = _lincomb(self._lam0.reshape(1, -1), flat[:t])[0]
        if flat.shape[0] > t:
            r = _random_field_elements(flat.shape[1] * _CHECKS, rng).reshape(flat.shape[1], _CHECKS)
            combined = _lincomb(flat, r)  # (H, checks): each holder's combined share
            predicted = _lincomb(self._lam_extra, combined[:t])
            bad = np.flatnonzero(np.any(predicted != combined[t:], axis=1))
            if bad.size:
                culprits = [self.holders[t + int(i)] for i in bad[:5]]
                raise InconsistentSharesError(
                    f"{bad.size} share(s) do not lie on the polynomial through the first"
                    f" {t} (holders {culprits} disagree)"
                )
        if np.any(limbs > 0xFFFF):
            raise InconsistentSharesError("shares reconstruct to a value that is not a secret")
        return [
            limbs[i * LIMBS:(i + 1) * LIMBS].astype("<u2").tobytes() for i in range(num_secrets)
        ]


def _lagrange_small(base: list[int], extra: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange coefficients at 0 and at every extra point with Python ints:
    faster than the vectorised path for small sets (sparse graphs)."""
    den = []
    for i, xi in enumerate(base):
        d = 1
        for j, xj in enumerate(base):
            if i != j:
                d = d * (xi - xj) % PRIME
        den.append(pow(d, -1, PRIME))

    def at(x: int) -> list[int]:
        full = 1
        for xj in base:
            full = full * (x - xj) % PRIME
        if full == 0:  # pragma: no cover - x is never a base point
            raise ConfigurationError("evaluation point collides with a base point")
        return [full * pow(x - xi, -1, PRIME) % PRIME * den[i] % PRIME
                for i, xi in enumerate(base)]

    lam0 = np.array(at(0), dtype=np.uint64)
    lam_extra = np.array([at(x) for x in extra], dtype=np.uint64).reshape(len(extra), len(base))
    return lam0, lam_extra


def _lincomb(coeffs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``coeffs @ values mod p`` exactly, for field elements below 2^31.

    ``coeffs`` is split into 16-bit halves so that every partial dot product
    stays below 2^64 for up to 2^17 terms; longer sums are chunked.
    """
    coeffs = np.asarray(coeffs, dtype=np.uint64)
    values = np.asarray(values, dtype=np.uint64)
    lo, hi = coeffs & np.uint64(0xFFFF), coeffs >> np.uint64(16)
    out = np.zeros((coeffs.shape[0], values.shape[1]), dtype=np.uint64)
    step = 1 << 16
    for start in range(0, coeffs.shape[1], step):
        sl = slice(start, start + step)
        lo_part = _mod(lo[:, sl] @ values[sl])
        hi_part = _mod(hi[:, sl] @ values[sl])
        out += _mod(hi_part * np.uint64(1 << 16)) + lo_part
        _mod(out)
    return out


def reconstruct(
    holders: Sequence[int], shares: Sequence[bytes], threshold: int, rng: RandomSource
) -> bytes:
    """Reconstruct one secret from serialised shares (convenience wrapper).

    Raises:
        InconsistentSharesError: as :meth:`Reconstructor.reconstruct`.
        ConfigurationError: fewer than ``threshold`` shares.
    """
    arr = np.stack([share_from_bytes(s) for s in shares]).reshape(len(shares), 1, LIMBS)
    return Reconstructor(holders, threshold).reconstruct(arr, rng)[0]
