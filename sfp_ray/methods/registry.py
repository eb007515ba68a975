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
this package; a new method is a new file whose ``register`` function is called below.
"""

from __future__ import annotations

from sfp_ray.errors import ConfigError
from sfp_ray.methods import federated, sfprompt, split_learning
from sfp_ray.methods.base import (
    FEDERATED_PHASES,
    SFPROMPT_PHASES,
    SPLIT_PHASES,
    CostContext,
    Method,
    RoundOutcome,
    ServerSpec,
)

#: The method every comparison is relative to (``*_ratio`` and ``accuracy_delta`` columns):
#: full federated fine-tuning, the paper's reference point.
REFERENCE_METHOD = "fl_full"

_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method to the registry (replacing one of the same name)."""
    _REGISTRY[method.name] = method
    return method


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return list(_REGISTRY)


def get_method(name: str) -> Method:
    """The registered method ``name``; unknown names list the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"method: unknown method {name!r}; registered: {', '.join(_REGISTRY)}") from None


for _module in (sfprompt, federated, split_learning):
    _module.register(register_method)

__all__ = [
    "FEDERATED_PHASES",
    "REFERENCE_METHOD",
    "SFPROMPT_PHASES",
    "SPLIT_PHASES",
    "CostContext",
    "Method",
    "RoundOutcome",
    "ServerSpec",
    "get_method",
    "list_methods",
    "register_method",
]
