"""Client and server roles as plain classes (no Ray): the work one party does in a round."""

from sfp_ray.roles.client import (
    ClientOutput,
    ClientTask,
    FedAvgClient,
    LocalBodyLink,
    SFPromptClient,
    SplitClient,
    SplitLearningClient,
)
from sfp_ray.roles.server import BodyAggregate, BodyReply, ServerRole
from sfp_ray.roles.workspace import Workspace

__all__ = [
    "BodyAggregate",
    "BodyReply",
    "ClientOutput",
    "ClientTask",
    "FedAvgClient",
    "LocalBodyLink",
    "SFPromptClient",
    "ServerRole",
    "SplitClient",
    "SplitLearningClient",
    "Workspace",
]
