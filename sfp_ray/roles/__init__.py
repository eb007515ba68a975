"""Client and server roles as plain classes (no Ray): the work one party does in a round.

The method-specific clients live with their methods in :mod:`sfp_ray.methods`; this
package holds what they share: the workspace (:mod:`~sfp_ray.roles.workspace`), the
client skeleton and split step (:mod:`~sfp_ray.roles.client`), the body server
(:mod:`~sfp_ray.roles.server`), evaluation and the optimizer factory.
"""

from sfp_ray.roles.client import BodyLink, ClientOutput, ClientRole, ClientTask, SplitClientRole, split_step
from sfp_ray.roles.server import BodyReply, LocalBodyLink, ServerRole
from sfp_ray.roles.workspace import Workspace

__all__ = [
    "BodyLink",
    "BodyReply",
    "ClientOutput",
    "ClientRole",
    "ClientTask",
    "LocalBodyLink",
    "ServerRole",
    "SplitClientRole",
    "Workspace",
    "split_step",
]
