"""What each registered method is, without building it: name, description, rate, forced settings, keys it ignores.

This module imports no torch (``sfp-ray methods`` lists the methods from it in a fraction
of a second; checks before a run resolve the methods' settings from it). The method
objects themselves (:mod:`sfp_ray.methods.registry`) are built from these entries, and a
method registered later with :func:`~sfp_ray.methods.register_method` adds its own entry.

``ignores`` declares the configuration keys (a section name stands for all its keys) whose
values the method never reads once its forced settings are applied: changing one of them
cannot change anything the method computes. Every other key counts as read
(:func:`reads`), so a key added to the configuration later is read by every method until a
method says otherwise. A sweep runs each method once per distinct configuration of the keys
it reads (:mod:`sfp_ray.sweeps`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sfp_ray.errors import ConfigError

#: The method every comparison is relative to (``*_ratio`` and ``accuracy_delta`` columns):
#: full federated fine-tuning, the paper's reference point.
REFERENCE_METHOD = "fl_full"

#: The phases of each family of methods, in the order a round runs them (the ``phase`` of ``costs.csv``).
SFPROMPT_PHASES = ("download", "prune", "local_update", "split_train", "upload", "aggregate", "eval")
FEDERATED_PHASES = ("download", "local_train", "upload", "aggregate", "eval")
SPLIT_PHASES = ("download", "split_train", "upload", "aggregate", "eval")  # split-learning baselines
#: The timeline plot's colour of each phase a client runs (``wait``: waiting for the server; the local
#: phases of both families share one colour). Aggregation and evaluation are not client phases.
PHASE_COLOURS = {"download": "#4c72b0", "prune": "#dd8452", "local_update": "#55a868", "local_train": "#55a868",
                 "split_train": "#c44e52", "upload": "#8172b3", "wait": "#c8c8c8"}

#: Configuration sections that never change what a run computes (how Ray is started, what ``project`` assumes).
NOT_IN_RESULTS = ("ray", "project")


@dataclass(frozen=True)
class MethodInfo:
    """A method's listing and declarations (see the module docstring for ``ignores``)."""

    name: str
    description: str
    default_lr: float = 1e-3
    overrides: Mapping[str, Any] = field(default_factory=dict)
    ignores: tuple[str, ...] = ()


#: The SFPrompt family's rate: SFPrompt's best of 1e-3..1e-2 on the default task
#: (benchmarks/results/learning_rate.md); the ablations share it, so that each differs from
#: SFPrompt in the one part it switches off.
SFPROMPT_LR = 3e-3
#: fl_full's rate: the best of 1e-4..1e-2 on the default task (benchmarks/results/learning_rate.md);
#: fl_prompt, fl_linear, sfl and sl keep 1e-3 (not tuned).
FL_FULL_LR = 3e-4

#: The federated baselines hold the whole model: the cut, pruning and SFPrompt's phases do not apply.
_FEDERATED_IGNORES = ("split", "pruning", "train.local_update", "train.split_epochs")
#: The split-learning baselines train no prompts, prune nothing and have no local phase (forced settings).
_SPLIT_IGNORES = ("prompt", "pruning", "train.local_update", "train.local_epochs", "split.bypass_pool")
_SPLIT_LEARNING = {"prompt.num_tokens": 0, "pruning.keep_ratio": 1.0, "train.local_update": False}

BUILTIN: tuple[MethodInfo, ...] = (
    MethodInfo("sfprompt", "SFPrompt: prompts + tail on clients, body on the server", SFPROMPT_LR),
    MethodInfo("sfprompt_no_prune", "SFPrompt without EL2N pruning", SFPROMPT_LR, {"pruning.keep_ratio": 1.0}),
    MethodInfo("sfprompt_no_local", "SFPrompt without the local-loss update", SFPROMPT_LR,
               {"train.local_update": False}),
    MethodInfo("sfprompt_no_prompt", "SFPrompt without prompts (tail only)", SFPROMPT_LR, {"prompt.num_tokens": 0}),
    MethodInfo("fl_full", "FedAvg, full fine-tuning on every client", FL_FULL_LR, {"prompt.num_tokens": 0},
               ignores=("prompt", *_FEDERATED_IGNORES)),
    # the cut places deep prompts (prompt.deep) in the client's blocks, so fl_prompt reads split.*
    MethodInfo("fl_prompt", "FedAvg of prompts + classifier, frozen model on clients (VPT in FL)",
               ignores=("pruning", "train.local_update", "train.split_epochs")),
    MethodInfo("fl_linear", "FedAvg of the classifier only", overrides={"prompt.num_tokens": 0},
               ignores=("prompt", *_FEDERATED_IGNORES)),
    MethodInfo("sfl", "SplitFed-V1: head + tail on clients, body trained on the server (FedAvg of both)",
               overrides=_SPLIT_LEARNING, ignores=_SPLIT_IGNORES),
    MethodInfo("sl", "vanilla split learning: clients one after another on one body, head + tail relayed",
               overrides=_SPLIT_LEARNING, ignores=_SPLIT_IGNORES),
)

_INFO: dict[str, MethodInfo] = {m.name: m for m in BUILTIN}


def record(info: MethodInfo) -> None:
    """Add (or replace) a method's entry; :func:`~sfp_ray.methods.register_method` calls it."""
    _INFO[info.name] = info


def list_methods() -> list[str]:
    """Names of the registered methods, built-in ones first.

    Example:
        >>> list_methods()[:2], "fl_full" in list_methods()
        (['sfprompt', 'sfprompt_no_prune'], True)
    """
    return list(_INFO)


def method_info(name: str) -> MethodInfo:
    """The entry of method ``name``; an unknown name is a ConfigError listing the registered ones."""
    try:
        return _INFO[name]
    except (KeyError, TypeError):
        raise unknown_method(name) from None


def unknown_method(name: Any) -> ConfigError:
    """The one-line error for a method name that is not registered."""
    return ConfigError(f"method: unknown method {name!r}; registered: {', '.join(_INFO)}")


def resolve(info: MethodInfo, cfg: Any) -> Any:
    """The configuration method ``info`` runs with: its forced settings, and its own learning rate when
    ``train.lr`` is null (``cfg``: a :class:`~sfp_ray.config.Config`; see :meth:`Method.resolve`).

    Example:
        >>> from sfp_ray.config import Config
        >>> c = resolve(method_info("fl_full"), Config())
        >>> c.method, c.train.lr, c.prompt.num_tokens
        ('fl_full', 0.0003, 0)
    """
    lr = {"train.lr": info.default_lr} if cfg.train.lr is None else {}
    return cfg.replace(method=info.name, **lr, **info.overrides)


def ignored(key: str, ignores: Iterable[str]) -> bool:
    """Whether the dotted ``key`` is one of ``ignores`` or lies in an ignored section.

    Example:
        >>> ignored("split.head_blocks", ("split",)), ignored("train.lr", ("train.local_update",))
        (True, False)
    """
    return any(key == p or key.startswith(p + ".") for p in ignores)


def reads(info: MethodInfo, keys: Iterable[str]) -> list[str]:
    """The keys among ``keys`` that ``info``'s method reads: all but those it ignores.

    Example:
        >>> reads(method_info("fl_full"), ["seed", "split.head_blocks", "prompt.deep", "train.lr"])
        ['seed', 'train.lr']
    """
    return [k for k in keys if not ignored(k, info.ignores)]


__all__ = ["BUILTIN", "FEDERATED_PHASES", "PHASE_COLOURS", "SFPROMPT_PHASES", "SPLIT_PHASES", "MethodInfo",
           "NOT_IN_RESULTS", "REFERENCE_METHOD", "ignored", "list_methods", "method_info",
           "reads", "record", "resolve", "unknown_method"]
