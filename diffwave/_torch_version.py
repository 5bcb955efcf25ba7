"""Refuse to run quietly on a torch whose `weights_only` loading can be bypassed.

torch < 2.10 has published bypasses of `torch.load(weights_only=True)` (CVE-2025-32434, CVE-2026-24747);
every checkpoint this toolkit reads relies on that guard, so an old torch gets a loud warning at import.
"""

from __future__ import annotations

import warnings

import torch
from torch.torch_version import TorchVersion

MINIMUM_TORCH = "2.10"


def check_torch_version(version: str | None = None) -> bool:
    """Warn and return False when `version` (default: the installed torch) is older than MINIMUM_TORCH."""
    version = str(torch.__version__ if version is None else version)
    if TorchVersion(version) >= MINIMUM_TORCH:
        return True
    warnings.warn(f"torch {version} is older than {MINIMUM_TORCH}: its weights_only checkpoint loading has "
                  "known bypasses (CVE-2025-32434, CVE-2026-24747); upgrade with "
                  f"pip install 'torch>={MINIMUM_TORCH}' before loading checkpoints you did not make",
                  RuntimeWarning, stacklevel=2)
    return False
