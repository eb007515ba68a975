"""Registry of training methods: SFPrompt, its ablations, and the baselines it is compared with.

Every entry is exercised by ``tests/test_methods.py`` (one round on synthetic data) and by
the projection test (its cost model against what a run executes).

================== ======================================================================
name               what trains where
================== ======================================================================
sfprompt           SFPrompt (Cao et al., arXiv 2407.17533): prompts + tail on the client,
                   frozen body on the server; EL2N pruning, local-loss update, split training
sfprompt_no_prune  ablation: ``pruning.keep_ratio=1.0``
sfprompt_no_local  ablation: ``train.local_update=false``
sfprompt_no_prompt ablation: ``prompt.num_tokens=0`` (tail only)
fl_full            FedAvg, full fine-tuning of the whole model on every client
fl_prompt          FedAvg of prompts + classifier, whole frozen model on the client (VPT in FL)
fl_linear          FedAvg of the classifier only (linear probing)
sfl                SplitFed-V1 (Thapa et al., AAAI 2022) on the same U-shaped cut: all of
                   head + tail on the client, the body trained on the server (one copy per
                   client, averaged with the client states); no prompts, pruning or
                   local-loss update
sl                 vanilla split learning (Gupta & Raskar, 2018): the same split step, but
                   the round's clients train one after another (ascending id) on one body,
                   each starting from the previous client's head, tail and body; no averaging
================== ======================================================================

Each method is an object (:class:`~sfp_ray.methods.base.Method`) defined in one file of
this package; a new method is a new file whose ``register`` function
:mod:`~sfp_ray.methods.registry` calls. What the listing needs (names, descriptions,
rates, forced settings, the keys a method ignores) lives in :mod:`~sfp_ray.methods.catalog`,
which imports no torch: ``list_methods`` and ``REFERENCE_METHOD`` are cheap, and the method
objects (``get_method``) and classes are imported on first use (PEP 562).
"""

from __future__ import annotations

from sfp_ray.lazy import lazy_exports
from sfp_ray.methods.catalog import REFERENCE_METHOD, MethodInfo, list_methods, method_info

#: Names imported on first use, and the module that defines each.
_LAZY = {
    ".registry": ("get_method", "register_method"),
    ".base": ("FEDERATED_PHASES", "SFPROMPT_PHASES", "SPLIT_PHASES", "CostContext", "Method", "Projection",
              "RoundOutcome", "ServerSpec"),
}

__all__ = [
    "FEDERATED_PHASES",
    "REFERENCE_METHOD",
    "SFPROMPT_PHASES",
    "SPLIT_PHASES",
    "CostContext",
    "Method",
    "MethodInfo",
    "Projection",
    "RoundOutcome",
    "ServerSpec",
    "get_method",
    "list_methods",
    "method_info",
    "register_method",
]
__getattr__ = lazy_exports(__name__, _LAZY)


def __dir__() -> list[str]:
    return __all__
