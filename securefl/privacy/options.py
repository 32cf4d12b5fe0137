"""Option enums of the privacy layer (kept free of torch and Opacus imports so
that the command line can build its parser quickly)."""

from __future__ import annotations

import enum

__all__ = ["AccountantKind", "Weighting"]


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
    """By its number of training examples (FedAvg)."""
    UNIFORM = "uniform"
    """Every client counts the same."""
