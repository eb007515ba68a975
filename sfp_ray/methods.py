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
sfl                SplitFed-V1 (Thapa et al., AAAI 2022) on the same U-shaped cut: all of
                   head + tail on the client, the body trained on the server (one copy per
                   client, averaged by the server at the end of the round); no prompts,
                   pruning or local-loss update
sl                 vanilla split learning (Gupta & Raskar, 2018): the same split step, but
                   the round's clients train one after another (ascending id) on one body,
                   each starting from the previous client's head + tail; no averaging
================== ======================================================================

Two attributes shape how the orchestrator and the executors run a method:
``trains_body`` (the server trains the body: :class:`~sfp_ray.roles.server.ServerRole`
with ``train=``, bracketed per round by the executor's ``begin_round``/``finish_round``)
and ``sequential`` (the orchestrator runs the cohort one client at a time, each client's
output state being the next one's global state, and the last one's the new global state).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sfp_ray.config import Config
from sfp_ray.errors import ConfigError
from sfp_ray.roles.client import FedAvgClient, SFPromptClient, SplitLearningClient
from sfp_ray.roles.workspace import Workspace

SFPROMPT_PHASES = ("download", "prune", "local_update", "split_train", "upload", "aggregate", "eval")
FEDERATED_PHASES = ("download", "local_train", "upload", "aggregate", "eval")
SPLIT_PHASES = ("download", "split_train", "upload", "aggregate", "eval")  # split-learning baselines


@dataclass(frozen=True)
class Method:
    """A registered method: how its clients train and which settings it forces.

    Args:
        name: registry name (``--method``).
        description: one line for listings.
        family: ``split`` (clients reach the body on the server) or ``federated`` (the
            whole model on every client).
        make_client: builds the client role on a workspace.
        overrides: dotted settings the method forces (see :meth:`resolve`).
        trains_body: the server trains the body (split-learning baselines); otherwise a
            split method's body is frozen (SFPrompt).
        sequential: clients of a round run one after another, each starting from the
            previous one's output state, with no averaging (vanilla split learning).
    """

    name: str
    description: str
    family: Literal["split", "federated"]
    make_client: Callable[[Workspace], Any]
    overrides: tuple[tuple[str, Any], ...] = ()
    trains_body: bool = False
    sequential: bool = False

    def __post_init__(self) -> None:
        if self.trains_body and self.family != "split":
            raise ValueError(f"method {self.name!r}: trains_body needs family 'split', got {self.family!r}")

    @property
    def uses_server(self) -> bool:
        """Whether clients need the server's body during a round."""
        return self.family == "split"

    @property
    def phases(self) -> tuple[str, ...]:
        """The ``phase`` names its cost rows may carry (DESIGN.md §4)."""
        if self.family == "federated":
            return FEDERATED_PHASES
        return SPLIT_PHASES if self.trains_body else SFPROMPT_PHASES

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

# the split-learning baselines train no prompts and run neither pruning nor the local-loss update
_SPLIT_LEARNING = (("prompt.num_tokens", 0), ("pruning.keep_ratio", 1.0), ("train.local_update", False))
register_method(Method("sfl", "SplitFed-V1: head + tail on clients, body trained on the server (FedAvg of both)",
                       "split", SplitLearningClient, _SPLIT_LEARNING, trains_body=True))
register_method(Method("sl", "vanilla split learning: clients one after another on one body, head + tail relayed",
                       "split", SplitLearningClient, _SPLIT_LEARNING, trains_body=True, sequential=True))
