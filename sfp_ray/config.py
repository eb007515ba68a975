"""Typed, frozen experiment configuration.

One :class:`Config` is built once from YAML and ``--set key=value`` overrides (every key
is listed in ``docs/configuration.md``); unknown keys and bad values raise
:class:`~sfp_ray.errors.ConfigError` with a message naming the dotted key and what is
allowed. Nothing deeper in the code reads nested dicts by string keys.

Example:
    >>> cfg = load_config(overrides=["federation.rounds=2", "data.name=synthetic"])
    >>> cfg.federation.rounds, cfg.data.name
    (2, 'synthetic')
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sfp_ray.errors import ConfigError, yaml_problem

Partition = Literal["iid", "dirichlet", "shards"]
Optimizer = Literal["sgd", "adam", "adamw"]
BypassPool = Literal["auto", "model", "avg"]
PruningPolicy = Literal["hardest", "easiest", "random"]  # sfp_ray.pruning.POLICIES
ScoreAt = Literal["download", "local_update"]
PruneScope = Literal["all", "split"]
CutPolicy = Literal["fixed", "per_device"]  # sfp_ray.placement
NodeLossPolicy = Literal["replace", "fail"]  # sfp_ray.executors.ray.pool
Precision = Literal["fp32", "bf16", "fp16"]  # sfp_ray.compute
ServerLinkPolicy = Literal["parallel", "shared", "fifo"]  # sfp_ray.costs.ServerLink
CapacityMap = Literal["id", "sample"]  # sfp_ray.capacity
#: Pooling the split's tail implements (``map``: timm's attention pool); ``model.global_pool`` must be one.
GLOBAL_POOLS = ("", "token", "avg", "max", "avgmax", "map")


@dataclass(frozen=True)
class ModelConfig:
    """Which timm Vision Transformer to build and from which weights.

    The size overrides (``img_size`` ... ``global_pool``) replace the timm model's own
    values; ``null`` keeps them.
    """

    name: str = "vit_tiny_patch16_224"
    """timm name of a Vision Transformer (``timm.models.VisionTransformer``), e.g. ``vit_base_patch16_224``."""
    img_size: int | None = 28
    """Input side in pixels; images are resized to it. ``null``: the timm model's own."""
    patch_size: int | None = 7
    """Patch side in pixels; must divide ``model.img_size``. ``null``: the timm model's own."""
    in_chans: int | None = 1
    """Input channels, 1 or 3 (images are converted). ``null``: the timm model's own."""
    depth: int | None = 6
    """Transformer blocks in all (head + body + tail). ``null``: the timm model's own."""
    embed_dim: int | None = None
    """Token width. ``null``: the timm model's own."""
    num_heads: int | None = None
    """Attention heads per block. ``null``: the timm model's own."""
    global_pool: str | None = None
    """Pooling before the classifier (``token``, ``avg``, ``max``, ``avgmax``). ``null``: the timm model's own."""
    fused_attn: bool = False
    """timm's fused attention kernel (PyTorch's scaled-dot-product attention: a flash or memory-efficient kernel on a
    GPU, a fused one on the CPU). Off: every pass runs the arithmetic of the FLOP-counted ones (counting forces the
    MATH kernel), so serial and Ray runs agree bit for bit. On: faster attention, above all on a GPU; FLOPs are still
    counted exactly (under the MATH kernel, once per shape)."""
    pretrained: bool = False
    """Start from timm's pre-trained weights (Hugging Face hub or its local cache), adapted to ``img_size`` and
    ``in_chans`` by timm and kept once as a local checkpoint (``.cache/sfp-ray``) that each actor reads its parts
    from; ``checkpoint: pretrain`` is then ignored, a checkpoint file given still wins."""
    checkpoint: str | None = "pretrain"
    """Weights to start from: a file (``.pt``/``.pth``/``.safetensors``, a state dict or ``{"model": ...}``),
    ``pretrain`` (the backbone ``sfp-ray pretrain`` caches for this model, pre-trained on first use) or
    ``null``/``none`` (random initialisation unless ``model.pretrained``)."""


@dataclass(frozen=True)
class SplitConfig:
    """Where the ViT is cut: the client keeps the first and the last blocks, the server the body between."""

    head_blocks: int = 1
    """Blocks of the client's head (after patch + position embedding); 0: the head is the embedding only."""
    tail_blocks: int = 1
    """Last blocks of the client's tail (before the final norm + classifier); 0: norm + classifier only."""
    bypass_pool: BypassPool = "auto"
    """Pooling of the body-bypassed path (EL2N scoring, local-loss update). ``model``: the model's own;
    ``avg``: the mean of the patch tokens; ``auto``: ``avg`` for a class-token ViT cut at ``head_blocks =
    tail_blocks = 0`` (whose class token never meets the image), ``model`` otherwise."""
    policy: CutPolicy = "fixed"
    """``fixed``: every client is cut at ``head_blocks``/``tail_blocks``. ``per_device``: each device class gets
    its own cut from its profile (memory, FLOP/s, links; see ``docs/heterogeneity.md``), ``head_blocks`` and
    ``tail_blocks`` each in ``[min_blocks, max_blocks]``; needs a method whose server runs a frozen body."""
    min_blocks: int = 1
    """``per_device``: fewest blocks of a client's head and of its tail (1: raw embeddings never leave the
    device)."""
    max_blocks: int | None = None
    """``per_device``: most blocks of a client's head and of its tail; ``null``: up to the model's depth (the
    server keeps at least one block)."""


@dataclass(frozen=True)
class PromptConfig:
    """Soft prompts (VPT, Jia et al. 2022) inserted after the class token at the head's input."""

    num_tokens: int = 10
    """Soft prompt tokens; 0 disables prompts."""
    deep: bool = False
    """VPT-deep on the client side: each head block after the first and each tail block replaces the prompt
    tokens with its own (the server's body gets none)."""


@dataclass(frozen=True)
class PruningConfig:
    """EL2N data pruning (Paul et al. 2021), SFPrompt's phase 1a; see :mod:`sfp_ray.pruning`.

    A client scores at its first participation and again every participation when
    ``every_round``, or when ``refresh_every`` (> 0) rounds have passed since it last scored;
    in between it trains on the samples it kept.
    """

    keep_ratio: float = 0.5
    """Fraction of the local samples kept, in (0, 1]: ``ceil(keep_ratio * n)``, at least 1; 1.0 disables
    pruning (no scoring)."""
    every_round: bool = False
    """Score and select again at every participation (instead of once)."""
    policy: PruningPolicy = "easiest"
    """Selection rule: ``hardest`` keeps the highest EL2N scores (the paper's literal reading), ``easiest`` the
    lowest, ``random`` a seeded uniform draw (the control)."""
    per_class: bool = True
    """Apply the rule within class quotas proportional to the client's class sizes (the kept set keeps the
    client's label mix)."""
    skip_top: float = 0.0
    """Fraction of the highest scores set aside before the rule applies, in [0, 1) (Paul et al.'s offset;
    within each class when ``per_class``); never so many that fewer than the kept count remain."""
    score_at: ScoreAt = "download"
    """When a client scores: ``download`` with the freshly downloaded prompts + tail; ``local_update`` after
    the local-loss update, which then trains on all local samples in that round."""
    refresh_every: int = 0
    """Score again once this many rounds have passed since the client last scored; 0: score once."""
    scope: PruneScope = "split"
    """What the kept samples are used for: ``all`` both the local-loss update and split training; ``split``
    only split training (what goes through the server), the local-loss update sees every sample."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation on the clients (and on the server's body copies of the split-learning baselines)."""

    local_epochs: int = 1
    """Epochs of SFPrompt's local-loss update (phase 1b) and of the federated baselines' local training."""
    split_epochs: int = 1
    """Epochs of split training through the server's body (SFPrompt phase 2, ``sfl``, ``sl``); 0 skips it."""
    batch_size: int = 16
    """Training mini-batch size (samples)."""
    lr: float | None = None
    """Learning rate (> 0); ``null``: the method's own rate, tuned on the default task by
    ``benchmarks/learning_rate.py`` (``sfp-ray methods`` lists it: 3e-3 for the SFPrompt family,
    3e-4 for ``fl_full``, 1e-3 for the others, not tuned). A value given here applies to every method."""
    optimizer: Optimizer = "adam"
    """``sgd`` (with ``train.momentum``), ``adam`` or ``adamw``; a fresh optimizer per phase and round."""
    weight_decay: float = 0.0
    """Weight decay of the optimizer (decoupled for ``adamw``)."""
    momentum: float = 0.9
    """Momentum of ``sgd`` (unused by ``adam`` and ``adamw``)."""
    local_update: bool = True
    """Run SFPrompt's local-loss update (phase 1b: prompts + tail trained with the body bypassed)."""
    eval_batch_size: int = 256
    """Batch size of evaluation and of EL2N scoring (passes without gradients)."""
    precision: Precision = "fp32"
    """Arithmetic of the forward passes: ``fp32``; ``bf16`` (autocast, on a GPU or the CPU) or ``fp16`` (autocast on
    a GPU, with dynamic loss scaling). Weights, optimizer state and FedAvg stay float32; activations and their
    gradients cross the cut in this precision, and their bytes are counted so."""
    deterministic: bool = True
    """torch's deterministic algorithms (and on a GPU the cuBLAS workspace setting they need): the serial and Ray
    executors then give the same bits on one GPU model; off, they agree to float rounding."""


@dataclass(frozen=True)
class DataConfig:
    """Dataset, class subset and partition across clients.

    ``classes`` defaults to the target task of the offline demo (Fashion-MNIST 5-9); the
    pre-training source task is ``pretrain.classes``.
    """

    name: str = "fashion-mnist"
    """Dataset: ``fashion-mnist``, ``digits``, ``synthetic``, ``cifar10``, ``cifar100``, ``svhn`` (``sfp-ray
    datasets``)."""
    root: str | None = None
    """Folder searched first for the dataset's files (then ``$SFP_DATA_ROOT`` and the default places)."""
    download: bool = False
    """Fetch a missing ``cifar10``/``cifar100``/``svhn`` into its torchvision root with torchvision's downloader
    (needs internet; done once). Off: a missing dataset fails with one line saying how to fetch it."""
    partition: Partition = "dirichlet"
    """Split of the training samples among clients: ``iid``, ``dirichlet`` (label skew, Hsu et al. 2019) or
    ``shards`` (label-sorted shards, McMahan et al. 2017)."""
    alpha: float = 0.5
    """Concentration of the ``dirichlet`` split (> 0); smaller means more label skew."""
    shards_per_client: int = 2
    """Shards dealt to each client by the ``shards`` split."""
    classes: tuple[int, ...] | None = (5, 6, 7, 8, 9)
    """Classes used (at least 2), relabelled 0..k-1 in the order given; ``null``: all of the dataset's."""
    samples_per_client: int | None = 64
    """Cap on a client's training samples (a seeded random subset of its partition); ``null``: no cap."""
    test_samples: int | None = 1000
    """Cap on the test set (a class-stratified subset, the same for every run seed); ``null``: all."""
    min_samples: int = 8
    """Minimum training samples per client: clients below it are topped up from the largest clients."""


@dataclass(frozen=True)
class FederationConfig:
    """Cohort and rounds.

    ``min_success_fraction``: the fraction of a round's cohort that must succeed (each
    client is retried once before it counts as failed); below it the round starts over
    once, and then the run stops with an error.
    """

    num_clients: int = 10
    """Clients of the federation (each with its own partition and device class)."""
    clients_per_round: int = 10
    """Clients sampled per round, without replacement, seeded by ``(seed, round)``; at most ``num_clients``."""
    rounds: int = 8
    """Federated rounds of a run."""
    eval_every: int = 1
    """Evaluate the global model every this many rounds, and after the last; other rounds report no accuracy."""
    min_success_fraction: float = 0.5
    """Fraction of a round's cohort that must succeed (``ceil(fraction * cohort)`` clients), in [0, 1]; a round
    short of it starts over once, then the run stops. Clients that are offline, drop out or are late count
    neither way."""
    deadline_s: float | None = None
    """Simulated seconds a round waits for clients; a client finishing later is ``late`` and not averaged.
    ``null``: no deadline."""
    over_select: float = 0.0
    """Select this fraction more clients than ``clients_per_round`` (at most ``num_clients``) and average the
    first ``clients_per_round`` to finish in simulated time; the others are ``late``."""
    availability_trace: str | None = None
    """A FedScale client behaviour trace (pickle as FedScale ships it, or JSON/YAML of the same mapping:
    client -> ``active``/``inactive`` second lists and ``finish_time``): client ``c`` follows entry
    ``c mod n`` and is online when the round's simulated start falls in one of its windows; replaces the
    device classes' ``availability`` (their ``dropout`` still applies). ``null``: no trace."""


@dataclass(frozen=True)
class DevicesConfig:
    """Device classes of the emulated clients and of the server (``sfp-ray devices`` lists them)."""

    mix: Mapping[str, float] = field(default_factory=lambda: {"rpi4": 0.5, "phone": 0.3, "laptop": 0.2})
    """Device class -> weight (normalised; largest-remainder counts, shuffled by ``seed``); a mapping given
    replaces the default one as a whole."""
    catalog: str | None = None
    """YAML file of extra device classes (the layout of ``sfp_ray/devices.yaml``; a built-in name is
    replaced); ``null``: the built-in classes only."""
    server: str = "edge_server"
    """Device class of the server, which runs the body and the aggregation."""
    server_link: ServerLinkPolicy = "parallel"
    """The server's link speeds (its class's ``downlink_mbps`` for what clients send, ``uplink_mbps`` for what
    they receive) as one capacity that concurrent transfers share: ``shared`` (processor sharing: equal shares,
    none above its client's own link), ``fifo`` (one transfer at a time, in arrival order). ``parallel``: every
    client's link runs in parallel at its own speed, unlimited by the server's (see ``docs/clock.md``)."""
    free_links: bool = False
    """Transfers take no simulated time (bytes are still counted): a clock of compute alone, e.g. to compare
    simulated with measured compute time (``benchmarks/clock.py``)."""
    capacity_trace: str | None = None
    """A per-client capacity trace in FedScale's ``client_device_capacity`` format (client -> ``computation``:
    ms per sample, ``communication``: kbit/s; a pickle as FedScale ships it, or JSON, YAML, CSV; or the fields
    ``flops_per_s``, ``uplink_mbps``, ``downlink_mbps``): each client gets its entry's compute speed and link
    bandwidth (both directions) instead of its class's; replaces the classes' ``speed_spread`` and
    ``link_spread``. ``null``: no trace."""
    capacity_map: CapacityMap = "id"
    """Which trace entry a client takes: ``id``: client ``c`` the entry ``c mod n`` in key order; ``sample``: an
    entry drawn with the run's ``seed`` (distinct entries while the trace has enough)."""
    capacity_sample_flops: float | None = None
    """FLOPs that one sample of the trace's ``computation`` (ms per sample) stands for: a client computes
    ``capacity_sample_flops / (computation / 1000)`` FLOP/s. ``null``: relative speeds: the trace's median
    device computes as fast as the client's class, a device twice as slow at half that."""


@dataclass(frozen=True)
class ProjectConfig:
    """Overrides of ``sfp-ray project`` (cost projection on the meta device); unset keys take the run's values."""

    samples_per_client: int | None = None
    """Local samples per client; ``null``: ``data.samples_per_client``."""
    img_size: int | None = None
    """Input side in pixels; ``null``: ``model.img_size`` (or the timm model's own)."""
    num_classes: int | None = None
    """Classifier outputs; ``null``: the number of ``data.classes`` (or the dataset's class count)."""


@dataclass(frozen=True)
class PretrainConfig:
    """Offline stand-in for ImageNet pre-training: the configured ViT trained on a source task.

    The backbone is cached under ``.cache/sfp-ray`` (``$SFP_CACHE_DIR``), keyed by the
    model and these settings.
    """

    seed: int = 0
    """Seed of the pre-training; the run's ``seed`` does not change the backbone, so runs over several seeds
    share one."""
    dataset: str = "fashion-mnist"
    """Dataset of the source task."""
    classes: tuple[int, ...] | None = (0, 1, 2, 3, 4)
    """Classes of the source task (disjoint from the default ``data.classes``); ``null``: all."""
    max_samples: int | None = 12000
    """Cap on the source task's training images (class-stratified); ``null``: all."""
    epochs: int = 2
    """Pre-training epochs."""
    batch_size: int = 64
    """Pre-training batch size."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, weight decay 0.05, one-cycle schedule)."""


@dataclass(frozen=True)
class RayConfig:
    """Ray runtime; no key needs to be set (the actor pool is sized from the cluster)."""

    max_actors: int | None = None
    """Cap on the client actors (device slots); below the number of clients, clients share slots (pooled
    mode). ``null``: one per client when all fit the cluster, else as many as fit."""
    num_cpus: float | None = None
    """Logical CPUs of a private local Ray (may exceed the physical cores); ``null``: the machine's cores."""
    num_gpus: float | None = None
    """Logical GPUs of a private local Ray (lets GPU-share device classes schedule without a GPU); ``null``:
    Ray's detection."""
    address: str = "local"
    """``local`` starts a private Ray, ``auto`` joins this machine's cluster (``$RAY_ADDRESS``, else the
    ``ray_current_cluster`` file ``ray start`` writes in Ray's temporary folder), ``HOST:PORT`` that head
    (``--address`` overrides it); the address must answer within 3 s, before anything starts."""
    server_max_concurrency: int = 8
    """Client requests the server actor serves at once (a threaded actor)."""
    on_node_loss: NodeLossPolicy = "replace"
    """What happens to client slots whose node was lost (or that cannot be placed) when no node offering their
    class (``device:<class>``) has room for them: ``replace`` starts them on any node with room (``resources.csv``:
    ``placed_away``; the simulated device does not change, only wall time does), ``fail`` leaves them out:
    their clients fail (``clients.csv``: ``node lost: ...``) until a node offering the class joins. A lost
    server or aggregator is always started again elsewhere."""
    placement_timeout_s: float = 60.0
    """Seconds an actor may take to be placed and started (after the pool's start: while no actor becomes
    ready) before the run gives up on it: a client slot is then left out as under ``on_node_loss`` and
    tried again when the cluster's nodes change; a server or aggregator that cannot be placed stops the run."""
    memory_fraction: float = 0.5
    """Share of each node's memory (Ray's ``memory`` resource) the pool plans to fill, in (0, 1]: its actors'
    estimates and the states a round keeps in flight in the object store (one client state per slot, four more); the
    rest stays free for the driver, Ray's own processes and the page cache. Every actor asks Ray for its own estimate;
    when even the smallest pool needs more than this share, it is planned against the whole node (with a notice)."""


@dataclass(frozen=True)
class Config:
    """The resolved experiment configuration: two top-level keys and one section per concern."""

    seed: int = 0
    """Run seed: partition, device assignment, initialisation of what no checkpoint holds, cohorts from
    ``(seed, round)``, client training from ``(seed, round, client_id)``; not the test subset or backbone."""
    method: str = "sfprompt"
    """Method of ``sfp-ray run`` without ``--method`` (``sfp-ray methods`` lists them); set by the method run."""
    model: ModelConfig = field(default_factory=ModelConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    project: ProjectConfig = field(default_factory=ProjectConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def replace(self, **changes: Any) -> Config:
        """Return a copy with dotted-key changes applied (typed values, coerced and validated).

        The typed sections are replaced in place of re-parsing the whole configuration.

        Example:
            >>> Config().replace(**{"federation.rounds": 3}).federation.rounds
            3
        """
        cfg: Config = self
        for dotted, value in changes.items():
            cfg = _replace_dotted(cfg, dotted.split("."), value, "")
        validate(cfg)
        return cfg


# --------------------------------------------------------------------------- conversion


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), suitable for YAML."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        elif isinstance(value, Mapping):
            out[f.name] = dict(value)
        else:
            out[f.name] = value
    return out


def dotted_items(cfg: Any) -> dict[str, Any]:
    """Every key of a configuration as ``dotted key -> value`` (``devices.mix`` stays one mapping).

    Example:
        >>> items = dotted_items(Config())
        >>> items["federation.rounds"], items["devices.mix"]["rpi4"]
        (8, 0.5)
    """
    out: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, Mapping) and f"{prefix}{k}" != "devices.mix":
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(to_dict(cfg), "")
    return out


def set_value(cfg: Config, key: str, value: Any) -> Config:
    """A copy with one dotted key set: the key checked and the value coerced to its type, not validated.

    Cross-field and range checks (:func:`validate`) are left to the caller, who may set
    several keys first (a sweep checks each value's type, then every combination).

    Example:
        >>> set_value(Config(), "pruning.keep_ratio", "2").pruning.keep_ratio
        2.0
    """
    return _replace_dotted(cfg, key.split("."), value, "")


def _replace_dotted(obj: Any, parts: list[str], value: Any, prefix: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    name = parts[0]
    if name not in names:
        raise ConfigError(f"{prefix}{'.'.join(parts)}: unknown configuration key; known keys here: "
                          + ", ".join(f"{prefix}{n}" for n in sorted(names)))
    tp = typing.get_type_hints(type(obj))[name]
    if len(parts) == 1:
        if dataclasses.is_dataclass(tp):
            raise ConfigError(f"{prefix}{name}: is a section; set one of its keys, e.g. {prefix}{name}.<key>")
        return dataclasses.replace(obj, **{name: _coerce(prefix + name, value, tp)})
    child = getattr(obj, name)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"{prefix}{'.'.join(parts)}: '{name}' is not a section")
    return dataclasses.replace(obj, **{name: _replace_dotted(child, parts[1:], value, f"{prefix}{name}.")})


def _allowed(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_allowed(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return "a list of integers"
    if origin is not None and origin.__name__ == "Mapping" or tp is Mapping:
        return "a mapping"
    if tp is type(None):
        return "null"
    plain = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}
    return plain.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Coerce a YAML value to the annotated type or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: got {value!r}, allowed: {', '.join(repr(a) for a in args)}")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null", "~") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: got {value!r}, expected {_allowed(tp)}")
    if origin is tuple:
        if isinstance(value, (int,)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, str):
            try:
                value = [int(v) for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
            except ValueError:
                raise ConfigError(f"{key}: got {value!r}, expected a list of integers") from None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}, expected a list of integers")
        return tuple(_coerce(key, v, args[0]) for v in value)
    if origin is not None and getattr(origin, "__name__", "") == "Mapping":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping like {{name: value}}")
        return {str(k): _coerce(f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # YAML reads `--set k=1` as an int
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: got {value!r}, expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}, expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {value!r}, expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}, expected a number")
        number: float | None = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: got {value!r}, expected a number")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: got {value!r}, expected a finite number")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: got {value!r}, expected a string")
    return value


def _from_dict(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}{key}"
            value = data[key]
            while isinstance(value, Mapping) and len(value) == 1:  # name the whole dotted key
                (sub, value), = value.items()
                where += f".{sub}"
            raise ConfigError(
                f"{where}: unknown configuration key; known keys here: "
                + ", ".join(f"{prefix}{n}" for n in sorted(names))
            )
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        value = data[f.name]
        if dataclasses.is_dataclass(tp):
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{f.name}: expected a section (mapping), got {value!r}")
            kwargs[f.name] = _from_dict(tp, value, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(f"{prefix}{f.name}", value, tp)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = {}
            node[p] = child
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{p}' is not a section")
        node = child
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    node[parts[-1]] = value


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and k != "mix":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def split_assignment(item: str, flag: str, expected: str) -> tuple[str, str]:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE)``, with one-line errors naming ``flag`` (``--set``, ``--grid``).

    Example:
        >>> split_assignment("federation.rounds = 3", "--set", "KEY=VALUE")
        ('federation.rounds', ' 3')
    """
    if "=" not in item:
        raise ConfigError(f"{flag} {item!r}: expected {expected}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{flag} {item!r}: empty key")
    return key, raw


def build_config(data: Mapping[str, Any] | None = None, overrides: Sequence[str] = (), *,
                 flag: str = "--set") -> Config:
    """Build and validate a Config from a nested mapping plus ``key=value`` overrides.

    ``flag`` names the overrides in error messages (``--set`` on the command line,
    ``overrides`` from Python).
    """
    tree: dict[str, Any] = _merge({}, dict(data or {}))
    for item in overrides:
        if not isinstance(item, str):
            raise ConfigError(f"{flag}: expected 'KEY=VALUE' strings, got {item!r}")
        key, raw = split_assignment(item, flag, "KEY=VALUE, e.g. federation.rounds=3")
        _set_dotted(tree, key, raw.strip())
    cfg = _from_dict(Config, tree, "")
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = (), *,
                flag: str = "--set") -> Config:
    """Load a YAML file (optional) and apply ``key=value`` overrides (``flag``: see :func:`build_config`)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"--config: {p} is a folder, not a YAML file")
        if not p.is_file():
            raise ConfigError(f"--config: file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"--config: {p} is not valid YAML: {yaml_problem(e)}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"--config: {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
        except OSError as e:
            raise ConfigError(f"--config: cannot read {p} ({e.strerror or e})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"--config: {p} must hold a mapping of sections at the top level")
        data = dict(loaded)
    return build_config(data, overrides, flag=flag)


def checkpoint_file(model: ModelConfig) -> Path | None:
    """The file ``model.checkpoint`` names, checked to exist; None for ``pretrain`` and ``none``.

    Example:
        >>> checkpoint_file(ModelConfig(checkpoint="pretrain")) is None, checkpoint_file(ModelConfig(checkpoint=None))
        (True, None)
    """
    ck = model.checkpoint
    if ck is None or str(ck).lower() in ("none", "null", "", "pretrain"):
        return None
    p = Path(ck)
    if p.is_dir():
        raise ConfigError(f"model.checkpoint: {p} is a folder, not a checkpoint file")
    if not p.is_file():
        raise ConfigError(f"model.checkpoint: file not found: {p}")
    return p


def dump_config(cfg: Config, extra: Mapping[str, Any] | None = None) -> str:
    """YAML text of the resolved configuration (plus optional extra top-level entries)."""
    d = to_dict(cfg)
    if extra:
        d.update(extra)
    return yaml.safe_dump(d, sort_keys=False)


# --------------------------------------------------------------------------- validation


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: Config) -> None:
    """Check value ranges and cross-field constraints that do not need the model built.

    Constraints that depend on the model (a cut deeper than its blocks) are checked in
    :func:`sfp_ray.models.split_vit` and by the orchestrator before round 1.
    """
    m, s, p, pr, t, d, f, r = (
        cfg.model, cfg.split, cfg.prompt, cfg.pruning, cfg.train, cfg.data, cfg.federation, cfg.ray
    )
    _require(0 <= cfg.seed < 2**32, "seed", f"must be an integer in [0, 2**32), got {cfg.seed}")
    _require(m.img_size is None or m.img_size > 0, "model.img_size",
             f"must be a positive integer or null (the model's own), got {m.img_size}")
    _require(m.patch_size is None or m.patch_size > 0, "model.patch_size",
             f"must be a positive integer or null (the model's own), got {m.patch_size}")
    _require(
        m.img_size is None or m.patch_size is None or m.img_size % m.patch_size == 0,
        "model.patch_size",
        f"must divide model.img_size ({m.img_size}), got {m.patch_size}",
    )
    _require(m.in_chans is None or m.in_chans in (1, 3), "model.in_chans", f"allowed: 1, 3 or null, got {m.in_chans}")
    _require(m.depth is None or m.depth > 0, "model.depth", f"must be positive or null, got {m.depth}")
    _require(m.embed_dim is None or m.embed_dim > 0, "model.embed_dim",
             f"must be a positive integer or null (the model's own), got {m.embed_dim}")
    _require(m.num_heads is None or m.num_heads > 0, "model.num_heads",
             f"must be a positive integer or null (the model's own), got {m.num_heads}")
    _require(m.embed_dim is None or m.num_heads is None or m.embed_dim % m.num_heads == 0, "model.num_heads",
             f"must divide model.embed_dim ({m.embed_dim}), got {m.num_heads}")
    _require(m.global_pool is None or m.global_pool in GLOBAL_POOLS, "model.global_pool",
             f"got {m.global_pool!r}, allowed: {', '.join(repr(g) for g in GLOBAL_POOLS)} or null (the model's own)")
    _require(s.head_blocks >= 0, "split.head_blocks", f"must be >= 0, got {s.head_blocks}")
    _require(s.tail_blocks >= 0, "split.tail_blocks", f"must be >= 0, got {s.tail_blocks}")
    _require(s.min_blocks >= 0, "split.min_blocks", f"must be >= 0, got {s.min_blocks}")
    _require(s.max_blocks is None or s.max_blocks >= s.min_blocks, "split.max_blocks",
             f"must be >= split.min_blocks ({s.min_blocks}) or null, got {s.max_blocks}")
    _require(p.num_tokens >= 0, "prompt.num_tokens", f"must be >= 0 (0 disables prompts), got {p.num_tokens}")
    _require(
        0.0 < pr.keep_ratio <= 1.0,
        "pruning.keep_ratio",
        f"must be in (0, 1] (1.0 disables pruning), got {pr.keep_ratio}",
    )
    _require(0.0 <= pr.skip_top < 1.0, "pruning.skip_top", f"must be in [0, 1), got {pr.skip_top}")
    _require(pr.refresh_every >= 0, "pruning.refresh_every", f"must be >= 0 (0: score once), got {pr.refresh_every}")
    _require(t.local_epochs >= 0, "train.local_epochs", f"must be >= 0, got {t.local_epochs}")
    _require(t.split_epochs >= 0, "train.split_epochs", f"must be >= 0, got {t.split_epochs}")
    _require(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    _require(t.eval_batch_size >= 1, "train.eval_batch_size", f"must be >= 1, got {t.eval_batch_size}")
    _require(t.lr is None or t.lr > 0, "train.lr", f"must be > 0 (or null: the method's own), got {t.lr}")
    _require(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _require(0 <= t.momentum < 1, "train.momentum", f"must be in [0, 1), got {t.momentum}")
    _require(d.alpha > 0, "data.alpha", f"must be > 0, got {d.alpha}")
    _require(d.shards_per_client >= 1, "data.shards_per_client", f"must be >= 1, got {d.shards_per_client}")
    _require(
        d.samples_per_client is None or d.samples_per_client >= 1,
        "data.samples_per_client",
        f"must be >= 1 or null (all), got {d.samples_per_client}",
    )
    _require(
        d.test_samples is None or d.test_samples >= 1,
        "data.test_samples",
        f"must be >= 1 or null (all), got {d.test_samples}",
    )
    _require(d.min_samples >= 1, "data.min_samples", f"must be >= 1, got {d.min_samples}")
    if d.classes is not None:
        _require(len(d.classes) >= 2, "data.classes", f"needs at least 2 classes, got {list(d.classes)}")
        _require(len(set(d.classes)) == len(d.classes), "data.classes", f"has duplicates: {list(d.classes)}")
        _require(all(c >= 0 for c in d.classes), "data.classes", f"must be >= 0: {list(d.classes)}")
    _require(f.num_clients >= 1, "federation.num_clients", f"must be >= 1, got {f.num_clients}")
    _require(
        1 <= f.clients_per_round <= f.num_clients,
        "federation.clients_per_round",
        f"must be in [1, federation.num_clients={f.num_clients}], got {f.clients_per_round}",
    )
    _require(f.rounds >= 1, "federation.rounds", f"must be >= 1, got {f.rounds}")
    _require(f.eval_every >= 1, "federation.eval_every", f"must be >= 1, got {f.eval_every}")
    _require(0.0 <= f.min_success_fraction <= 1.0, "federation.min_success_fraction",
             f"must be in [0, 1] (the fraction of a round's clients that must succeed), got {f.min_success_fraction}")
    _require(f.deadline_s is None or f.deadline_s > 0, "federation.deadline_s",
             f"must be > 0 simulated seconds or null (no deadline), got {f.deadline_s}")
    _require(0.0 <= f.over_select <= 10.0, "federation.over_select",
             f"must be in [0, 10] (0.3: select 30 % more clients), got {f.over_select}")
    if cfg.devices.mix:
        for name, frac in cfg.devices.mix.items():
            _require(frac >= 0, f"devices.mix.{name}", f"fraction must be >= 0, got {frac}")
        _require(sum(cfg.devices.mix.values()) > 0, "devices.mix", "fractions must sum to > 0")
    else:
        raise ConfigError("devices.mix: must name at least one device class, e.g. {rpi4: 1.0}")
    dv = cfg.devices
    _require(dv.capacity_sample_flops is None or dv.capacity_sample_flops > 0, "devices.capacity_sample_flops",
             f"must be > 0 FLOPs per sample or null (relative speeds), got {dv.capacity_sample_flops}")
    _require(
        r.max_actors is None or r.max_actors >= 1,
        "ray.max_actors",
        f"must be >= 1 or null (one actor per client), got {r.max_actors}",
    )
    _require(r.num_cpus is None or r.num_cpus > 0, "ray.num_cpus", f"must be > 0, got {r.num_cpus}")
    _require(r.num_gpus is None or r.num_gpus >= 0, "ray.num_gpus", f"must be >= 0, got {r.num_gpus}")
    _require(0.0 < r.memory_fraction <= 1.0, "ray.memory_fraction",
             f"must be in (0, 1] (the share of a node's memory the pool plans for), got {r.memory_fraction}")
    _require(
        r.server_max_concurrency >= 1,
        "ray.server_max_concurrency",
        f"must be >= 1, got {r.server_max_concurrency}",
    )
    _require(math.isfinite(r.placement_timeout_s) and r.placement_timeout_s > 0, "ray.placement_timeout_s",
             f"must be > 0 seconds, got {r.placement_timeout_s}")
    pc = cfg.pretrain
    _require(0 <= pc.seed < 2**32, "pretrain.seed", f"must be an integer in [0, 2**32), got {pc.seed}")
    _require(pc.epochs >= 1, "pretrain.epochs", f"must be >= 1, got {pc.epochs}")
    _require(pc.batch_size >= 1, "pretrain.batch_size", f"must be >= 1, got {pc.batch_size}")
    _require(pc.max_samples is None or pc.max_samples >= 1, "pretrain.max_samples",
             f"must be >= 1 or null (all), got {pc.max_samples}")
    _require(pc.lr > 0, "pretrain.lr", f"must be > 0, got {pc.lr}")
    pj = cfg.project
    for key in ("samples_per_client", "img_size", "num_classes"):
        value = getattr(pj, key)
        _require(value is None or value >= 1, f"project.{key}", f"must be >= 1 or null (the run's value), got {value}")
