"""Vectorised Shamir t-of-n secret sharing of 32-byte secrets.

Field and encoding (normative, see the protocol spec):

* the field is GF(p) with the Mersenne prime p = 2^31 - 1;
* a 32-byte secret is split into 16 little-endian 16-bit limbs; each limb is
  shared independently with its own random polynomial of degree t - 1 whose
  constant term is the limb;
* the evaluation point of a holder is its client id (1 <= id < p);
* a share is the 16 evaluations, each a little-endian uint32: 64 bytes.

A reconstruction is only as good as its shares: one forged share among
exactly t moves the secret by a multiple of that share's error, and when the
error is small (one limb +1) the result is still a valid 32-byte string.
Nothing in the shares alone can catch that, so :meth:`Reconstructor.
reconstruct_verified` takes a ``verify`` callback that checks every
reconstructed secret against a commitment its owner made before the shares
were used (the protocol checks a hash of the self-mask seed, and a masking
private key against its public key).  With more than t shares, every extra
share is also checked against the interpolated polynomial (by a random
linear combination of the limbs, which misses an inconsistency with
probability about 2^-62).  When a check fails and there are extra shares,
:func:`locate` looks for a polynomial through t of the shares whose secret
passes ``verify`` and which at most ``floor((H - t + 1) / 2)`` of the ``H``
shares disagree with, and names exactly the holders of those shares.  The
commitment acts as one extra evaluation point, so this names exactly the bad
holders whenever at most ``floor((H - t + 1) / 2)`` of them are bad (one bad
share among t + 1 is always located); with exactly t shares a failed check
can only abort.

Cost: a passing reconstruction costs nothing extra (one joint random check
for all secrets, as before).  A failing secret costs one candidate for
``k = 0`` (the first t shares), ``t + 1`` candidates for ``k = 1`` (the
t-subsets of the first t + 1 shares, whose Lagrange weights at 0 follow from
those of all t + 1 by one factor each), and larger ``k`` only while the candidates stay within
:data:`MAX_CANDIDATES`; each candidate is O(t) field operations and one
``verify``, and each candidate that passes ``verify`` one exact O(H t)
comparison with every other share.  Holders found bad are then left out of
every other failing secret with one reconstruction for all of them (one
pass: O(H t) plus O((H - t) t) per secret): all the known bad holders at
once while at least t holders remain without them, else each set of
``floor((H - t + 1) / 2)`` of them in turn when there are at most
:data:`MAX_LEAVE_OUT_SETS` such sets, else none (each failing secret is
then searched, within the budget below).  A secret that a pass leaves
failing has a bad holder not yet known, so the next full search names at
least one new one.  One holder, or several, forging their shares of every
secret thus cost a full search per forger found plus a few passes per
change of the known set -- not a full search per secret.

Every search of one call (of :func:`reconstruct_verified_groups`: of all its
groups) draws on one :class:`SearchBudget` of ``MAX_SEARCHES * (t + 2 +
MAX_CANDIDATES) + (H + S) * (t + 2) + BATCH_PASSES * S`` candidate
reconstructions of one secret (``H`` distinct holders, ``S`` secrets; a
pass over ``m`` secrets costs ``m``).  That pays for a single-removal search
(at most ``t + 2`` candidates) for every secret and every holder, so one bad
share per secret is always located, and for :data:`MAX_SEARCHES` deep
searches besides.  When it runs out the call raises
:class:`SearchBudgetExceededError` (an :class:`UnverifiableSecretError`, so
the protocol aborts with ``COMMITMENT_MISMATCH``): it never returns a secret
that failed ``verify`` nor names a holder from a partial search, and the
total work is bounded however many holders collude.

Everything is numpy ``uint64`` arithmetic with products below 2^62: sharing
two secrets to 1000 holders takes milliseconds, not seconds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from securefl.errors import ConfigurationError, InconsistentSharesError
from securefl.hazmat.randomness import RandomSource

PRIME = 2**31 - 1
LIMBS = 16
SHARE_BYTES = 4 * LIMBS
SECRET_BYTES = 32
_P = np.uint64(PRIME)
_CHECKS = 2
MAX_CANDIDATES = 4096
"""Upper bound on the holder sets of size two or more tried by :func:`locate`
for one secret (every single holder is always tried)."""
MAX_SEARCHES = 8
"""Full :func:`locate` searches (each up to ``t + 2 + MAX_CANDIDATES``
candidates) that one call's :class:`SearchBudget` pays for."""
BATCH_PASSES = 8
"""Passes over every secret of a call (leaving known bad holders out) that
its :class:`SearchBudget` pays for, on top of :data:`MAX_SEARCHES`."""
SHALLOW_SEARCHES = 1
"""Single-removal searches (``t + 2`` candidates each) that one call's
:class:`SearchBudget` pays for per secret and per holder, on top of
:data:`MAX_SEARCHES`: one bad share per secret is always located."""
MAX_LEAVE_OUT_SETS = 64
"""When more holders are known bad than can be left out at once (``H - t``),
the sets of ``floor((H - t + 1) / 2)`` of them are left out in turn only if
there are at most this many; otherwise each failing secret is searched."""


class SearchBudget:
    """The candidate reconstructions (of one secret each) left for the bad
    share search of one call: shared by every secret (and every group) of
    :meth:`Reconstructor.reconstruct_verified` or
    :func:`reconstruct_verified_groups`, so that the work of one call is
    bounded, not the work per secret.

    Args:
        threshold: t.
        secrets: how many secrets the call reconstructs.
        holders: how many distinct holders their shares have.
    """

    def __init__(self, threshold: int, secrets: int, holders: int = 0) -> None:
        self.total = (MAX_SEARCHES * (threshold + 2 + MAX_CANDIDATES)
                      + SHALLOW_SEARCHES * (holders + secrets) * (threshold + 2)
                      + BATCH_PASSES * secrets)
        self.spent = 0

    def spend(self, count: int, *, index: int) -> None:
        """Pay for ``count`` candidates of the search for secret ``index``.

        Raises:
            SearchBudgetExceededError: the budget would be exceeded (nothing
                is spent).
        """
        if self.spent + count > self.total:
            raise SearchBudgetExceededError(
                f"the search for bad shares ran out of this call's budget of {self.total}"
                f" candidate reconstructions before locating them", index=index)
        self.spent += count


def _mod(a: np.ndarray) -> np.ndarray:
    return np.remainder(a, _P, out=a)


def _powmod(base: np.ndarray, exponent: int) -> np.ndarray:
    """Element-wise ``base ** exponent mod p`` (square and multiply, in place)."""
    result = np.ones_like(base, dtype=np.uint64)
    b = base.astype(np.uint64) % _P
    multiply, remainder = np.multiply, np.remainder
    e = exponent
    while e:
        if e & 1:
            remainder(multiply(result, b, out=result), _P, out=result)
        e >>= 1
        if e:
            remainder(multiply(b, b, out=b), _P, out=b)
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


def shares_to_bytes(shares: np.ndarray) -> bytes:
    """Every share of ``shares`` (any shape ending in 16 field elements)
    serialised as :func:`share_to_bytes` does, concatenated in C order (so
    share ``i`` of the flattened array is bytes ``64 i .. 64 i + 63``)."""
    return np.ascontiguousarray(shares, dtype="<u4").tobytes()


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
    if set(map(len, raws)) - {SHARE_BYTES}:
        bad = next(raw for raw in raws if len(raw) != SHARE_BYTES)
        raise InconsistentSharesError(f"a share is {SHARE_BYTES} bytes, got {len(bad)}")
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
        self._lam0, self._lam_extra = _lagrange(xs[:threshold], xs[threshold:])

    def _share_array(self, shares: np.ndarray) -> np.ndarray:
        """``shares`` as an array of shape (holders, S, LIMBS) of field elements.

        Raises:
            ConfigurationError: the wrong shape.
            InconsistentSharesError: an element is not a field element.
        """
        arr = np.asarray(shares)
        if arr.ndim != 3 or arr.shape[0] != len(self.holders) or arr.shape[2] != LIMBS:
            raise ConfigurationError(
                f"shares must have shape ({len(self.holders)}, S, {LIMBS}), got {arr.shape}"
            )
        if np.any(arr >= PRIME):
            raise InconsistentSharesError("share element is not a field element")
        return arr
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
        arr = self._share_array(shares)
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


    def reconstruct_verified(
        self,
        shares: np.ndarray,
        verify: Callable[[int, bytes], bool],
        rng: RandomSource,
        suspects: set[int] | None = None,
        budget: SearchBudget | None = None,
    ) -> VerifiedSecrets:
        """Reconstruct every secret and check it with ``verify(index, secret)``;
        locate the bad holders of any secret that fails.

        Args:
            shares: ``(H, S, 16)`` shares in holder order.
            verify: True iff the S-th secret matches its owner's commitment.
            rng: randomness for the consistency checks.
            suspects: holders already known to be bad (tried first by the
                search; holders found bad here are added to it).
            budget: the search budget to draw on (default: a fresh
                :class:`SearchBudget` for this call's secrets).

        Returns:
            the secrets (every one passed ``verify``), and for each secret
            whose shares were not all good, the holders left out.

        Raises:
            UnverifiableSecretError: a secret whose shares cannot be decoded
                to one that passes ``verify`` (always so with exactly t
                shares and a failed check); ``index`` says which.  Its
                subclass :class:`SearchBudgetExceededError` when the search
                ran out of ``budget``.
        """
        arr = self._share_array(shares)
        suspects = set() if suspects is None else suspects
        h, num_secrets = arr.shape[0], arr.shape[1]
        if budget is None:
            budget = SearchBudget(self.threshold, num_secrets, h)
        y = arr.astype(np.uint64)
        t = self.threshold
        limbs = _lincomb(self._lam0.reshape(1, -1), y[:t].reshape(t, -1))[0]
        limbs = limbs.reshape(num_secrets, LIMBS)
        suspicious = np.any(limbs > 0xFFFF, axis=1)
        if h > t:
            # one random combination of every limb of every secret (as cheap as
            # before); only when it fails, one combination per secret to see which
            flat = y.reshape(h, -1)
            r = _random_field_elements(flat.shape[1] * _CHECKS, rng).reshape(-1, _CHECKS)
            combined = _lincomb(flat, r)
            if np.any(_lincomb(self._lam_extra, combined[:t]) != combined[t:]):
                r = _random_field_elements(num_secrets * LIMBS * _CHECKS, rng).reshape(
                    num_secrets, LIMBS, _CHECKS)
                lo, hi = r & np.uint64(0xFFFF), r >> np.uint64(16)
                comb = _mod(np.einsum("hsl,slc->hsc", y, hi))
                comb = _mod(comb * np.uint64(1 << 16) + _mod(np.einsum("hsl,slc->hsc", y, lo)))
                predicted = _lincomb(self._lam_extra, comb[:t].reshape(t, -1))
                off = predicted.reshape(h - t, num_secrets, _CHECKS) != comb[t:]
                suspicious |= np.any(off, axis=(0, 2))
        out: list[bytes] = []
        failing: list[int] = []
        for i in range(num_secrets):
            value = limbs[i].astype("<u2").tobytes()
            out.append(value)
            if suspicious[i] or not verify(i, value):
                failing.append(i)
        excluded: dict[int, tuple[int, ...]] = {}
        radius = (h - t + 1) // 2
        pending = failing
        # the sets of holders already left out of every pending secret (pending
        # only shrinks, so one of them never needs trying again)
        tried: set[frozenset[int]] = set()
        known: frozenset[int] | None = None
        leave_outs: Iterator[frozenset[int]] = iter(())
        while pending:
            now = frozenset(j for j, x in enumerate(self.holders) if x in suspects)
            if now != known:
                known = now
                leave_outs = _leave_outs(known, h - t, radius)
            leave_out = next((s for s in leave_outs if s not in tried), None)
            if leave_out is not None:
                # holders found bad (here or for an earlier group): one reconstruction
                # without them for every secret still failing; it finds every secret
                # whose bad holders are all among them
                tried.add(leave_out)
                batch = list(pending)
                # at most one pass per growth of the known set (at most H
                # passes in a call): each is billed its secrets only
                budget.spend(len(batch), index=batch[0])
                found = _without(self.holders, y[:, batch, :], t, sorted(leave_out), radius,
                                 lambda k, v, batch=batch: verify(batch[k], v))
                for k, hit in found.items():
                    out[batch[k]], excluded[batch[k]] = hit
                pending = [i for i in pending if i not in excluded]
                continue
            # every set of known bad holders was left out of this secret in vain:
            # it has a bad holder not known yet, which the search names
            i = pending.pop(0)
            out[i], excluded[i] = locate(self.holders, arr[:, i, :], t,
                                         lambda v, i=i: verify(i, v), rng, index=i,
                                         budget=budget)
            suspects.update(excluded[i])
        return VerifiedSecrets(out, {i: bad for i, bad in excluded.items() if bad})


@dataclass(frozen=True)
class VerifiedSecrets:
    """What :meth:`Reconstructor.reconstruct_verified` returns.

    Attributes:
        secrets: every reconstructed secret, each one verified.
        excluded: secret index -> the holders whose shares of it were left
            out (their shares are not on the polynomial of the verified
            secret); absent for secrets whose shares were all good.

    The repr shows only ``excluded``, never the secrets (as
    :class:`~securefl.protocol.unmasking.MaskSumTask`'s).
    """

    secrets: list[bytes] = field(repr=False)
    excluded: dict[int, tuple[int, ...]] = field(default_factory=dict)


class UnverifiableSecretError(InconsistentSharesError):
    """No consistent set of the supplied shares reconstructs a secret that
    passes the commitment check (always the case for a failed check with
    exactly t shares).

    Attributes:
        index: the position of the secret in the reconstruction call (in its
            group, for :func:`reconstruct_verified_groups`).
        group: the group's position for :func:`reconstruct_verified_groups`,
            else 0.
    """

    def __init__(self, detail: str, *, index: int, group: int = 0) -> None:
        self.index = index
        self.group = group
        super().__init__(detail)


class SearchBudgetExceededError(UnverifiableSecretError):
    """The search for bad shares ran out of its :class:`SearchBudget` (more
    deep searches than it pays for: secrets with several bad shares at
    positions that take many candidates).  No secret
    that failed its check is returned and nobody is named from it."""


_GROUP_BATCH = 1024
"""Groups reconstructed per batch by :func:`reconstruct_verified_groups`
(bounds its working arrays to a few MB)."""


def reconstruct_verified_groups(
    groups: Sequence[tuple[Sequence[int], np.ndarray]],
    threshold: int,
    verify: Callable[[int, int, bytes], bool],
    rng: RandomSource,
    suspects: set[int] | None = None,
) -> list[VerifiedSecrets]:
    """:meth:`Reconstructor.reconstruct_verified` for many groups of holders
    at once (a sparse graph gives nearly every secret its own holder set).

    The result is that of calling, for each group ``g`` in order,
    ``Reconstructor(holders_g, threshold).reconstruct_verified(shares_g,
    lambda i, v: verify(g, i, v), rng, suspects)``: groups with the same
    number of holders and of secrets have their Lagrange weights, secrets
    and random consistency checks (independent draws per group) computed
    in one batch of array operations, and every group where anything fails
    -- a limb that is not 16 bits, an extra share off the polynomial, a
    ``verify`` that says no, a share that is not a field element, a bad
    point or shape -- is handed whole to that call, which locates the bad
    holders (or raises) exactly as it always did.  A group that passes
    gets the same secrets that call would return (both interpolate through
    its first ``threshold`` shares) and no exclusions.

    Args:
        groups: ``(holders, shares)`` pairs, ``shares`` of shape
            ``(len(holders), S, 16)`` in holder order.
        threshold: t.
        verify: ``verify(group, index, secret)``: True iff the secret matches
            its owner's commitment.
        rng: randomness for the consistency checks.
        suspects: holders known to be bad, shared across the groups (as one
            set passed to every call; holders found bad are added).

    One :class:`SearchBudget` (for the secrets of every group) is shared by
    the calls, so the search work of the whole call is bounded.

    Returns:
        one :class:`VerifiedSecrets` per group, in order.

    Raises:
        UnverifiableSecretError: for the first group (in order) whose secret
            cannot be decoded, or whose search ran out of the shared budget
            (:class:`SearchBudgetExceededError`); ``group`` and ``index`` say
            which secret.
        InconsistentSharesError, ConfigurationError: as that call, for the
            first group that raises them.
    """
    suspects = set() if suspects is None else suspects
    budget = SearchBudget(threshold, sum(int(np.shape(shares)[1]) if np.ndim(shares) == 3
                                         else 0 for _, shares in groups),
                          len({h for holders, _ in groups for h in holders}))
    passed: dict[int, list[bytes]] = {}
    buckets: dict[tuple[int, int], list[int]] = {}
    for g, (holders, shares) in enumerate(groups):
        arr = np.asarray(shares)
        if arr.ndim == 3 and arr.shape[0] == len(holders) >= threshold >= 1 \
                and arr.shape[1] >= 1 and arr.shape[2] == LIMBS:
            buckets.setdefault((len(holders), arr.shape[1]), []).append(g)
    batches = [(h, num, members[i:i + _GROUP_BATCH])
               for (h, num), members in buckets.items()
               for i in range(0, len(members), _GROUP_BATCH)]
    for h, num, members in batches:
        xs = np.array([list(groups[g][0]) for g in members], dtype=np.int64).reshape(-1, h)
        y = np.stack([np.asarray(groups[g][1]) for g in members]).reshape(len(members), h, -1)
        if y.dtype.kind not in "ui" or (y.size and int(y.min()) < 0):
            continue  # not field elements: every group to the single path
        y = y.astype(np.uint64)
        ordered = np.sort(xs, axis=1)
        valid = (ordered[:, 0] >= 1) & (ordered[:, -1] < PRIME) & np.all(
            ordered[:, 1:] > ordered[:, :-1], axis=1) & np.all(y < _P, axis=(1, 2))
        if not valid.any():
            continue
        members = [g for g, ok in zip(members, valid, strict=True) if ok]
        xs, y = xs[valid], y[valid]
        lam0, lam_extra = _lagrange(xs[:, :threshold], xs[:, threshold:])
        limbs = _lincomb(lam0[:, None, :], y[:, :threshold])[:, 0, :]  # (G, S * 16)
        good = ~np.any(limbs > 0xFFFF, axis=1)
        if h > threshold:
            width = y.shape[2]
            r = _random_field_elements(len(members) * width * _CHECKS, rng).reshape(
                len(members), width, _CHECKS)
            combined = _lincomb(y, r)  # (G, H, checks)
            predicted = _lincomb(lam_extra, combined[:, :threshold])
            good &= np.all(predicted == combined[:, threshold:], axis=(1, 2))
        raw = limbs.astype("<u2").tobytes()
        size = num * SECRET_BYTES
        for k, g in enumerate(members):
            if good[k]:
                values = [raw[k * size + i * SECRET_BYTES:k * size + (i + 1) * SECRET_BYTES]
                          for i in range(num)]
                if all(verify(g, i, value) for i, value in enumerate(values)):
                    passed[g] = values
    out: list[VerifiedSecrets] = []
    for g, (holders, shares) in enumerate(groups):
        if g in passed:
            out.append(VerifiedSecrets(passed[g]))
            continue
        try:
            out.append(Reconstructor(holders, threshold).reconstruct_verified(
                shares, lambda i, v, g=g: verify(g, i, v), rng, suspects, budget))
        except UnverifiableSecretError as exc:
            exc.group = g
            raise
    return out


def locate(
    holders: Sequence[int],
    shares: np.ndarray,
    threshold: int,
    verify: Callable[[bytes], bool],
    rng: RandomSource,
    *,
    index: int = 0,
    budget: SearchBudget | None = None,
) -> tuple[bytes, tuple[int, ...]]:
    """Find a polynomial through ``threshold`` of the shares whose secret
    passes ``verify`` and which at most ``floor((H - t + 1) / 2)`` of the
    ``H`` shares disagree with; return its secret and those holders.

    Candidates are the ``t``-subsets of the first ``t + k`` holders, for
    ``k = 0, 1, ...``: when at most ``k`` shares are bad, one of them is all
    good.  Each candidate costs O(t) field operations (the Lagrange weights of
    ``T minus R`` at 0 are those of ``T`` times ``(x_i - x_j) / (0 - x_j)``
    for every ``j`` in ``R``); sizes ``k >= 2`` are tried while the number of
    candidates stays within :data:`MAX_CANDIDATES`.

    Args:
        holders: the evaluation points, one per row of ``shares``.
        shares: ``(H, 16)`` field elements.
        threshold: t.
        verify: the commitment check of the secret.
        rng: unused (kept for a stable signature; every comparison is exact).
        index: reported in the error.
        budget: when given, every candidate (of every size) is paid from it.

    Returns:
        the verified secret and the holders whose shares are not on its
        polynomial (ascending).  When at most ``floor((H - t + 1) / 2)`` shares
        are bad these are exactly the bad ones: a passing polynomial agrees
        with the true one at 0 (the commitment binds) and at at least ``t - 1``
        good shares, so it is the true one.

    Raises:
        UnverifiableSecretError: no such polynomial within the search bound
            (always when ``H == t``).
        SearchBudgetExceededError: ``budget`` ran out first.
    """
    del rng
    h, t = len(holders), threshold
    y = np.asarray(shares, dtype=np.uint64).reshape(h, LIMBS)
    if h <= t:
        raise UnverifiableSecretError(
            f"the {h} shares reconstruct a secret that fails its commitment check, and"
            f" with threshold {t} there is no extra share to find the bad one", index=index)
    radius = (h - t + 1) // 2
    tried = 0
    for k in range(radius + 1):
        pool = list(range(t + k))
        xs = np.array([holders[i] for i in pool], dtype=np.uint64)
        lam = Reconstructor([holders[i] for i in pool], t + k)._lam0.astype(np.uint64)
        # col[j][i] = (x_i - x_j) / (0 - x_j): removing pool[j] from the base
        neg_inv = _inverse(np.mod(-xs.astype(np.int64), PRIME).astype(np.uint64))
        diff = np.mod(xs.astype(np.int64).reshape(1, -1) - xs.astype(np.int64).reshape(-1, 1),
                      PRIME).astype(np.uint64)
        cols = _mod(diff * neg_inv.reshape(-1, 1))
        for removed in itertools.combinations(range(t + k), k):
            if budget is not None:
                budget.spend(1, index=index)
            if k > 1:
                tried += 1
                if tried > MAX_CANDIDATES:
                    raise UnverifiableSecretError(
                        f"no consistent set of shares found within the search bound"
                        f" ({MAX_CANDIDATES} candidates)", index=index)
            weights = lam.copy()
            for j in removed:
                weights = _mod(weights * cols[j])
            limbs = _lincomb(weights.reshape(1, -1), y[pool])[0]
            if np.any(limbs > 0xFFFF):
                continue
            value = limbs.astype("<u2").tobytes()
            if not verify(value):
                continue
            base = [i for i in pool if i - pool[0] not in removed]
            bad = _off_polynomial(holders, y, t, base)
            if len(bad) <= radius:
                return value, tuple(sorted(holders[i] for i in bad))
    raise UnverifiableSecretError(
        f"no polynomial through {t} of the {h} shares reconstructs a secret passing its"
        f" commitment check with at most {radius} shares off it", index=index)


def _off_polynomial(holders: Sequence[int], y: np.ndarray, t: int,
                    base: Sequence[int]) -> list[int]:
    """Rows of ``y`` (``(H, W)``) not on the polynomial through the rows
    ``base`` (``t`` of them), compared exactly in every column."""
    in_base = set(base)
    rest = [i for i in range(len(holders)) if i not in in_base]
    if not rest:
        return []
    order = list(base) + rest
    rec = Reconstructor([holders[i] for i in order], t)
    ys = y[order].reshape(len(order), -1)
    predicted = _lincomb(rec._lam_extra, ys[:t])
    off = np.any(predicted != ys[t:], axis=1)
    return [rest[e] for e in np.flatnonzero(off)]


def _leave_outs(known: frozenset[int], spare: int, radius: int) -> Iterator[frozenset[int]]:
    """The sets of known bad holders (positions) to leave out of the failing
    secrets, in order: all of them when at least t holders remain without
    them (``len(known) <= spare = H - t``), else every set of ``min(radius,
    spare)`` of them (a decodable secret has at most ``radius`` bad shares)
    if there are at most :data:`MAX_LEAVE_OUT_SETS` such sets.  Nothing when
    nobody is known, ``radius`` is 0, or there are more sets than that: then
    each failing secret is searched (a pass per set would cost up to ``C(K,
    radius)`` passes)."""
    if not known or radius == 0:
        return iter(())
    if len(known) <= spare:
        return iter((known,))
    size = min(radius, spare)
    if math.comb(len(known), size) > MAX_LEAVE_OUT_SETS:
        return iter(())
    return (frozenset(c) for c in itertools.combinations(sorted(known), size))


def _without(holders: Sequence[int], y: np.ndarray, t: int, known: Sequence[int],
             radius: int, verify: Callable[[int, bytes], bool],
             ) -> dict[int, tuple[bytes, tuple[int, ...]]]:
    """Reconstruct every secret of ``y`` (``(H, S, 16)``) from the holders not
    in ``known``; keep the secrets that pass ``verify`` with at most
    ``radius`` shares off their polynomial, with those shares' holders."""
    left_out = set(known)
    base = [i for i in range(len(holders)) if i not in left_out][:t]
    in_base = set(base)
    order = base + [i for i in range(len(holders)) if i not in in_base]
    rec = Reconstructor([holders[i] for i in order], t)
    num = y.shape[1]
    ys = y[order].reshape(len(order), -1)
    limbs = _lincomb(rec._lam0.reshape(1, -1), ys[:t])[0].reshape(num, LIMBS)
    predicted = _lincomb(rec._lam_extra, ys[:t]).reshape(-1, num, LIMBS)
    off = np.any(predicted != ys[t:].reshape(-1, num, LIMBS), axis=2)  # (extra, secret)
    found: dict[int, tuple[bytes, tuple[int, ...]]] = {}
    for k in range(num):
        if np.any(limbs[k] > 0xFFFF):
            continue
        value = limbs[k].astype("<u2").tobytes()
        bad = [order[t + e] for e in np.flatnonzero(off[:, k])]
        if len(bad) <= radius and verify(k, value):
            found[k] = (value, tuple(sorted(holders[i] for i in bad)))
    return found


def _lagrange(base: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Lagrange coefficients of the ``base`` points at 0 and at every
    ``extra`` point, shapes ``(t,)`` and ``(E, t)``:
    ``lambda_i(x) = prod_{j != i} (x - x_j) / prod_{j != i} (x_i - x_j)``.
    Leading axes are batch axes: ``base`` of shape ``(..., t)`` and ``extra``
    of shape ``(..., E)`` give ``(..., t)`` and ``(..., E, t)``, one set of
    coefficients per group of points, each as for that group alone.

    Only differences of points are inverted.  When every point is below
    :data:`TABLE_POINTS` (client ids usually are), their inverses are looked
    up in a table of ``1/k mod p`` for ``k < TABLE_POINTS`` (built once, by a
    vectorised Fermat inversion), and ``1/d_i`` is the product of the looked-up
    ``1/(x_i - x_j)``: no exponentiation per reconstruction.  Otherwise every
    denominator is inverted in one batched Fermat inversion."""
    t = base.shape[-1]
    b = base.astype(np.int64)
    lead = b.shape[:-1]
    points = np.concatenate([np.zeros((*lead, 1), dtype=np.int64), extra.astype(np.int64)],
                            axis=-1)
    gaps = b[..., :, None] - b[..., None, :]  # x_i - x_j
    offsets = points[..., :, None] - b[..., None, :]  # x - x_i, never 0
    diagonal = np.arange(t)
    gaps[..., diagonal, diagonal] = 1
    if int(max(b.max(), points.max())) < TABLE_POINTS:
        table = _inverse_table()  # covers every difference: |x - y| < TABLE_POINTS
        inv_gaps = _signed_lookup(table, gaps)
        inv_den = _prod_mod(inv_gaps, axis=-1)  # 1 / d_i
        inv_offsets = _signed_lookup(table, offsets)
    else:
        den = _prod_mod(np.mod(gaps, PRIME).astype(np.uint64), axis=-1)
        inv = _inverse(np.concatenate(
            [den, np.mod(offsets, PRIME).astype(np.uint64).reshape(*lead, -1)], axis=-1))
        inv_den, inv_offsets = inv[..., :t], inv[..., t:].reshape(offsets.shape)
    full = _prod_mod(np.mod(offsets, PRIME).astype(np.uint64), axis=-1)[..., None]
    lam = _mod(_mod(full * inv_offsets) * inv_den[..., None, :])
    return lam[..., 0, :], lam[..., 1:, :]


TABLE_POINTS = 1 << 16
"""Points (client ids) below this have their differences inverted by table."""
_TABLE: list[np.ndarray] = []


def _inverse_table() -> np.ndarray:
    """``1/k mod p`` at index ``k`` for ``0 < k < TABLE_POINTS`` (index 0: 0)."""
    tables = _TABLE  # one list slot, replaced whole: safe to read from threads
    if tables and tables[0].size >= TABLE_POINTS:
        return tables[0]
    table = _inverse(np.arange(TABLE_POINTS, dtype=np.uint64))  # index 0: 0 ** (p-2) = 0
    _TABLE[:] = [table]
    return table


def _signed_lookup(table: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``1/k mod p`` element-wise for non-zero ``|k| < TABLE_POINTS``."""
    inv = table[np.abs(k)]
    return np.where(k < 0, _P - inv, inv)


def _lincomb(coeffs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``coeffs @ values mod p`` exactly, for field elements below 2^31
    (leading axes, if any, are batch axes, as for ``@``).

    ``coeffs`` is split into 16-bit halves so that every partial dot product
    stays below 2^64 for up to 2^17 terms; longer sums are chunked.
    """
    coeffs = np.asarray(coeffs, dtype=np.uint64)
    values = np.asarray(values, dtype=np.uint64)
    lo, hi = coeffs & np.uint64(0xFFFF), coeffs >> np.uint64(16)
    shape = (*np.broadcast_shapes(coeffs.shape[:-2], values.shape[:-2]), coeffs.shape[-2],
             values.shape[-1])
    out = np.zeros(shape, dtype=np.uint64)
    step = 1 << 16
    for start in range(0, coeffs.shape[-1], step):
        sl = slice(start, start + step)
        lo_part = _mod(lo[..., sl] @ values[..., sl, :])
        hi_part = _mod(hi[..., sl] @ values[..., sl, :])
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
