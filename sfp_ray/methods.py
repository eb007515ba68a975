"""Registry of training methods: SFPrompt, its ablations, and federated baselines.

Every entry is exercised by ``tests/test_methods.py`` (one round on synthetic data).

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
================== ======================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sfp_ray.config import Config
from sfp_ray.errors import ConfigError
from sfp_ray.roles.client import FedAvgClient, SFPromptClient
from sfp_ray.roles.workspace import Workspace

SFPROMPT_PHASES = ("download", "prune", "local_update", "split_train", "upload", "aggregate", "eval")
FEDERATED_PHASES = ("download", "local_train", "upload", "aggregate", "eval")


@dataclass(frozen=True)
class Method:
    """A registered method: how its clients train and which settings it forces."""

    name: str
    description: str
    family: Literal["split", "federated"]
    make_client: Callable[[Workspace], Any]
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def uses_server(self) -> bool:
        """Whether clients need the server's body during a round."""
        return self.family == "split"

    @property
    def phases(self) -> tuple[str, ...]:
        return SFPROMPT_PHASES if self.family == "split" else FEDERATED_PHASES

    def resolve(self, cfg: Config) -> Config:
        """The configuration this method runs with (its forced settings applied)."""
        changes = {"method": self.name}
        changes.update(dict(self.overrides))
        return cfg.replace(**changes)


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


def _is_prompt(n: str) -> bool:
    return ".prompt" in n


def _is_classifier(n: str) -> bool:
    return n.startswith("tail.head.") or n.startswith("tail.fc_norm.")


register_method(Method("sfprompt", "SFPrompt: prompts + tail on clients, body on the server", "split",
                       SFPromptClient))
register_method(Method("sfprompt_no_prune", "SFPrompt without EL2N pruning", "split", SFPromptClient,
                       (("pruning.keep_ratio", 1.0),)))
register_method(Method("sfprompt_no_local", "SFPrompt without the local-loss update", "split", SFPromptClient,
                       (("train.local_update", False),)))
register_method(Method("sfprompt_no_prompt", "SFPrompt without prompts (tail only)", "split", SFPromptClient,
                       (("prompt.num_tokens", 0),)))
register_method(Method("fl_full", "FedAvg, full fine-tuning on every client", "federated",
                       lambda ws: FedAvgClient(ws, lambda n: True), (("prompt.num_tokens", 0),)))
register_method(Method("fl_prompt", "FedAvg of prompts + classifier, frozen model on clients (VPT in FL)",
                       "federated", lambda ws: FedAvgClient(ws, lambda n: _is_prompt(n) or _is_classifier(n))))
register_method(Method("fl_linear", "FedAvg of the classifier only", "federated",
                       lambda ws: FedAvgClient(ws, _is_classifier), (("prompt.num_tokens", 0),)))
