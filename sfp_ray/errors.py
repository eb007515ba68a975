"""Exceptions raised by sfp-ray library code.

Library code raises; only the CLI turns an error into an exit code and a one-line message.
"""

from __future__ import annotations


class SfpRayError(Exception):
    """Base class of every error sfp-ray raises on purpose."""


class ConfigError(SfpRayError, ValueError):
    """A configuration value is invalid. The message names the key and what is allowed."""


class DataError(SfpRayError):
    """A dataset cannot be found or read. The message says where it looked and what to do."""


class ModelError(SfpRayError):
    """A model or checkpoint cannot be created or loaded."""


class ClusterError(SfpRayError):
    """The Ray cluster cannot host the requested actors, or cannot be reached."""


class RoundLost(SfpRayError):
    """Work of a round was lost (its server, or client results held on a node that left); it must start over."""


class ServerLost(RoundLost):
    """The server died during a round; the executor restarted it and the round must start over."""


class RoundFailed(SfpRayError):
    """Too few clients of a round succeeded (``federation.min_success_fraction``), even after a retry."""
