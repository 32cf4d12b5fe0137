"""Option enums of the privacy layer (kept free of torch and Opacus imports so
that the command line can build its parser quickly)."""

from __future__ import annotations

import enum

__all__ = ["AccountantKind", "Adjacency", "NoiseSource", "Weighting", "adjacency_for"]


class AccountantKind(str, enum.Enum):
    """Which Opacus accountant turns a history into an epsilon."""

    RDP = "rdp"
    """Rényi DP (Mironov 2017; Opacus's ``RDPAccountant``)."""
    PRV = "prv"
    """Privacy random variables (Gopi et al. 2021; Opacus's ``PRVAccountant``),
    tighter than RDP."""


class Weighting(str, enum.Enum):
    """How a client's update is weighted in the server's average."""

    EXAMPLES = "examples"
    """By its number of training examples (FedAvg).  The count enters the sum
    in the clear, so it is public: epsilons are then stated for replace-one
    adjacency."""
    UNIFORM = "uniform"
    """Every client counts the same (the default): nothing reveals a client's
    record count; epsilons are stated for add/remove-one adjacency."""


class Adjacency(str, enum.Enum):
    """The neighbouring relation an epsilon is stated for (the ledger's
    ``adjacency``)."""

    ADD_REMOVE_ONE = "add-remove-one"
    """Neighbouring data sets differ by adding or removing one record (the
    record count is protected too).  Opacus's and dp-accounting's default."""
    REPLACE_ONE = "replace-one"
    """Neighbouring data sets have the same size and differ in one record
    (the record count is public)."""


class NoiseSource(str, enum.Enum):
    """Where a client's DP noise, sampling and rounding come from (the
    ledger's ``noise_source``; drawn by :mod:`securefl.privacy.noise`)."""

    OS_CSPRNG = "os-csprng"
    """``os.urandom``, secret to the client."""
    INSECURE_SEEDED = "insecure-seeded"
    """Generators seeded from a public integer: reproducible, and regenerable
    by anyone who knows the seed (no DP guarantee against them)."""


def adjacency_for(weighting: Weighting) -> Adjacency:
    """The adjacency under which a client's epsilon holds against the server.

    With uniform weighting nothing the client sends depends on its record
    count ``n`` except through the DP-noised update, so the add/remove-one
    epsilon holds (``n`` itself is protected).  Weighting by examples sends
    ``n`` in the clear into the sum: ``n`` is then public and only
    replace-one adjacency (which keeps ``n`` fixed) gives a valid epsilon.
    """
    if Weighting(weighting) is Weighting.EXAMPLES:
        return Adjacency.REPLACE_ONE
    return Adjacency.ADD_REMOVE_ONE
