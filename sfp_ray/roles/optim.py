"""The optimizer named by ``train.optimizer``, shared by the client and the server roles."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def make_optimizer(params: Iterable[torch.nn.Parameter], train: Any) -> torch.optim.Optimizer:
    """The optimizer named by ``train.optimizer`` over ``params`` (``train``: a ``TrainConfig``).

    Example:
        >>> from sfp_ray.config import TrainConfig
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> type(make_optimizer([w], TrainConfig(optimizer="sgd", lr=0.01))).__name__
        'SGD'
    """
    if train.lr is None:
        raise ValueError("train.lr is null (each method's own rate): resolve the configuration with its method "
                         "first (Method.resolve, as prepare_run does)")
    params = list(params)
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
