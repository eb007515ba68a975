"""Shared pytest set-up for the sfp-ray test suite.

Module-level settings apply before any test module imports timm or torch work starts:

* ``HF_HUB_OFFLINE=1``: timm's hub look-ups fail fast instead of stalling ~47 s without
  internet (DESIGN.md §5);
* two torch threads: the suite is sized for a 2-core CI machine.

Fixtures shared by several test files live below.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(2)


# --------------------------------------------------------------------------- fixtures
