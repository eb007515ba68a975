"""The configuration's schema: one typed, frozen dataclass per section under :class:`Config`.

Every key is a field with its type (the annotation), its default and its meaning (the
attribute docstring under it, which :mod:`sfp_ray.docgen` turns into
``docs/configuration.md``). :meth:`Config.replace` sets dotted keys, coerced by
:mod:`sfp_ray.config.conversion` and checked by :mod:`sfp_ray.config.validation`.

Example:
    >>> Config().federation.rounds, ModelConfig().name
    (8, 'vit_tiny_patch16_224')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sfp_ray.config.conversion import set_value
from sfp_ray.config.validation import validate

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
            cfg = set_value(cfg, dotted, value)
        validate(cfg)
        return cfg

