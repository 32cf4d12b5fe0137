"""Adversarial review of the noise extension: plans the configuration accepts
but the protocol cannot honour.

Each test marked REAL HOLE fails against the current code.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest

from securefl import SecAggConfig
from securefl.encoding import FixedPointCodec, max_frac_bits
from securefl.errors import ConfigurationError, SecureFLError
from securefl.hazmat import noise
from securefl.protocol.inmemory import secure_sum
from securefl.protocol.noise import NoisePlan


def test_a_plan_whose_noise_cannot_be_sampled_is_accepted() -> None:
    """REAL HOLE (availability; FAILS).  ``check_bits`` lets ``V`` grow to
    about ``2^118`` on a 64-bit ring, but Poisson means above ``2^31`` are
    drawn as ``ceil(lam / 2^31)`` table draws per coordinate, so the client's
    R2 needs ``2 m ceil(lam / 2^31)`` keystream words per component.  With
    ``V = 2^50`` (sigma = 2^25 ring units: a 2^25 fixed-point scale on a
    64-bit ring) and a 10^5-parameter model the client asks for 78 GiB and
    dies with a ``MemoryError`` (not a ``SecureFLError``) in R2, after it has
    already dealt its shares.  Run under a 2 GiB address-space limit."""
    script = textwrap.dedent("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        import numpy as np
        from securefl import SecAggConfig
        from securefl.errors import ConfigurationError, SecureFLError
        from securefl.protocol.inmemory import secure_sum
        from securefl.protocol.noise import NoisePlan
        try:
            cfg = SecAggConfig(5, 100_000, bits=64, noise=NoisePlan(2.0 ** 50))
        except ConfigurationError:
            print("refused up front")
            raise SystemExit(0)
        try:
            secure_sum({c: np.zeros(100_000, dtype=np.uint64) for c in cfg.ids}, cfg)
            print("ran")
        except SecureFLError as e:
            print("typed", type(e).__name__)
        except MemoryError as e:
            print("MemoryError", e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.startswith(("refused up front", "ran")), out


def test_a_subnormal_target_variance_is_accepted_then_crashes_every_client_in_r2() -> None:
    """REAL HOLE (low; FAILS).  ``NoisePlan(5e-324)`` passes validation (every
    component rounds up to the least subnormal), but the sampler halves the
    variance in floating point, gets mean 0 and raises in the middle of R2."""
    try:
        config = SecAggConfig(3, 4, bits=32, threshold=2, noise=NoisePlan(5e-324))
    except ConfigurationError:
        return  # refused up front: the fix
    layout = config.noise_layout
    assert layout is not None and layout.base == 5e-324
    inputs = {c: np.zeros(4, dtype=np.uint64) for c in config.ids}
    res = secure_sum(inputs, config)  # raises ConfigurationError inside a client's R2
    assert res.noise_variance is not None and res.noise_variance >= 5e-324


def test_an_enormous_target_escapes_as_overflowerror() -> None:
    """REAL HOLE (low; FAILS).  Every refusal is a ``SecureFLError`` (HELPERS
    standard); near the float maximum the layout's ``float(Fraction)``
    conversions raise a bare ``OverflowError`` out of ``SecAggConfig``."""
    with pytest.raises(SecureFLError):
        SecAggConfig(10, 4, bits=64, threshold=1,
                     noise=NoisePlan.calibrate_to_threshold(1e308))
    with pytest.raises(SecureFLError):
        NoisePlan(sys.float_info.max).layout(10, 6, 64)


def test_the_split_of_large_means_samples_less_than_the_rounded_up_variance() -> None:
    """REAL HOLE (informational: relative 2^-53; FAILS).  The plan rounds every
    component variance *up* so that "the released variance is never below V"
    exactly, but ``_split_mean`` computes the part mean ``lam / p`` rounded to
    nearest: for about half of the means above 2^31 the sampler's law has
    variance ``2 p (lam / p) < mu``.  With ``f = n`` and ``u = n`` the
    noise actually drawn is then below ``V``."""
    v, n = 15922595851470.0, 4
    layout = NoisePlan(v).layout(n, n)
    assert Fraction(layout.base) * n >= Fraction(v)  # the plan's promise, on paper
    part, parts = noise._split_mean(layout.base / 2)
    sampled = 2 * parts * Fraction(part)  # the variance of the law skellam() draws
    assert n * sampled >= Fraction(v), float(Fraction(v) - n * sampled)


def test_the_codec_bit_budget_and_the_noise_bit_budget_do_not_compose() -> None:
    """REAL HOLE (medium-low, silent wrong result; FAILS).  ``FixedPointCodec``
    accepts data sums up to ``2^(bits-1) - 1`` in magnitude (``max_frac_bits``)
    and the noise plan accepts noise of +-8 sigma up to ``2^(bits-2)`` ([NZ-1a]:
    "half the ring, the other half is left to the data"), each check
    separately, with the same ``bits``.  Together the sum wraps and decodes to
    the wrong sign, silently.  (Also: the plan adds noise of variance ``V`` to
    the codec's weight coordinate.)"""
    n, bits = 3, 32
    clip = 715827882 / 2**29  # n * clip * 2^29 = 2^31 - 2: the budget's edge, exactly
    frac = max_frac_bits(bits=bits, clip=clip, num_clients=n)
    assert frac == 29
    codec = FixedPointCodec(((64,),), bits=bits, frac_bits=frac, clip=clip, num_clients=n)
    config = SecAggConfig(n, codec.vector_length, bits=bits,
                          noise=NoisePlan(2.0**20))  # sigma = 1024 units = 2e-6 clip units
    gen = np.random.default_rng(0)
    inputs = {c: codec.encode([np.full(64, clip, dtype=np.float32)], gen).vector
              for c in config.ids}
    res = secure_sum(inputs, config)
    decoded = codec.decode_sum(np.asarray(res.total, dtype=np.uint64)).tensors[0]
    # (64 coordinates: each wraps with probability ~1/2)
    # the true sum is 3 clip = 4.0 per coordinate, the noise's sd 2e-6: any
    # coordinate whose noise is >= +2 units wraps to about -4.0
    assert np.all(np.abs(decoded - n * clip) < 1.0), decoded


def test_config_refuses_plans_that_cannot_be_honoured_on_a_small_ring() -> None:
    """Confirmed claim: [NZ-1a] refuses a ring too small for the noise, naming
    the numbers (the check itself is sound: ``16 sigma_max <= 2^(bits-1)``)."""
    with pytest.raises(ConfigurationError, match="bits >= "):
        SecAggConfig(10, 4, bits=16, noise=NoisePlan(1e8))
    layout = NoisePlan(1e6).layout(10, 6, 32)
    assert 16 * float(layout.max_released_variance()) ** 0.5 <= 2 ** 31
