"""Client and server roles as plain classes (no Ray): the work one party does in a round."""

from sfp_ray.roles.client import ClientOutput, ClientTask, FedAvgClient, LocalBodyLink, SFPromptClient
from sfp_ray.roles.server import BodyReply, ServerRole
from sfp_ray.roles.workspace import Workspace

__all__ = [
    "BodyReply",
    "ClientOutput",
    "ClientTask",
    "FedAvgClient",
    "LocalBodyLink",
    "SFPromptClient",
    "ServerRole",
    "Workspace",
]
