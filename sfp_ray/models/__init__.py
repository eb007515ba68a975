"""timm ViTs, checkpoints, and the SFPrompt three-way split (head / body / tail) with soft prompts.

One idea per module, every public name re-exported here (``from sfp_ray.models import split_vit``):

* :mod:`sfp_ray.models.build`: model creation (by timm name or from a ``ModelConfig``) and
  checkpoint I/O;
* :mod:`sfp_ray.models.split`: the cut of a ViT into head / body / tail with soft prompts
  (the seams, the parts, :func:`split_vit`);
* :mod:`sfp_ray.models.meta`: materialising the parts a process holds from the ``meta``
  device, and their seeded initial values.
"""

from __future__ import annotations

from sfp_ray.models.build import (
    CLASSIFIER_KEYS,
    LazySafetensors,
    build_from_config,
    check_checkpoint,
    create_model,
    input_shape,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    set_fused_attn,
    shape_of,
)
from sfp_ray.models.meta import init_parameters, materialize
from sfp_ray.models.split import (
    Embeddings,
    SplitViT,
    TokenSelector,
    ViTBody,
    ViTHead,
    ViTTail,
    init_prompts,
    name_seed,
    prompt_init_bound,
    split_vit,
    token_selector,
    vit_embed,
)

__all__ = [
    "CLASSIFIER_KEYS",
    "Embeddings",
    "LazySafetensors",
    "SplitViT",
    "TokenSelector",
    "ViTBody",
    "ViTHead",
    "ViTTail",
    "build_from_config",
    "check_checkpoint",
    "create_model",
    "init_parameters",
    "init_prompts",
    "input_shape",
    "load_checkpoint",
    "materialize",
    "name_seed",
    "prompt_init_bound",
    "read_checkpoint",
    "save_checkpoint",
    "set_fused_attn",
    "shape_of",
    "split_vit",
    "token_selector",
    "vit_embed",
]
