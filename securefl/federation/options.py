"""Option enums of the federation layer (free of torch imports)."""

from __future__ import annotations

import enum

__all__ = ["DatasetName"]


class DatasetName(str, enum.Enum):
    """The embedded data sets (scikit-learn's bundled copies; no download)."""

    DIGITS = "digits"
    BREAST_CANCER = "breast_cancer"
