"""transformers (PyTorch) CLIP text, CLIP vision and RoBERTa weights -> the NNX towers.

A source is either a live transformers model (its `config` and `state_dict()`) or a model
directory (`config.json` plus weights, streamed one tensor at a time by
`vdit_jax.convert.io`). The target module is only traced (`core.build_with_weights`) and filled
with the converted arrays, so no random full-size weights are ever materialised.

Key layouts accepted: the transformers 5.x state dicts (`embeddings.*` for CLIPTextModel,
`vision_model.*` for CLIPVisionModelWithProjection, `embeddings.*` for RobertaModel) and the
on-disk hub checkpoints (`text_model.*`; a full CLIPModel for ViT-H/14 whose text half is
skipped; `roberta.*` of a masked-LM checkpoint whose LM head is skipped).
"""

import jax.numpy as jnp

from vdit_jax import abstract_build
from vdit_jax.convert import core, io
from vdit_jax.models import clip, roberta

# Non-persistent buffers that older checkpoints still carry.
_BUFFERS = (r".*position_ids", r".*token_type_ids")

CLIP_TEXT_RULES = core.Rules(
    renames=[(r"^text_model\.", "")],
    ignore=_BUFFERS + (r"text_projection\..*", r"logit_scale"),
)
CLIP_VISION_RULES = core.Rules(
    ignore=_BUFFERS + (r"text_model\..*", r"text_projection\..*", r"logit_scale"),
)
ROBERTA_RULES = core.Rules(
    renames=[(r"^roberta\.", "")],
    ignore=_BUFFERS + (r"lm_head\..*",),
)


def clip_text_from_transformers(src, *, dtype=jnp.float32, param_dtype=jnp.float32,
                                remat: bool = False) -> clip.CLIPTextTransformer:
  """CLIPTextTransformer with the weights of a `CLIPTextModel` or its directory."""
  config_dict, items, name = io.read_model(src)
  config = clip.CLIPTextConfig.from_transformers(config_dict)
  make = lambda: clip.CLIPTextTransformer(config, dtype=dtype, param_dtype=param_dtype,
                                          remat=remat, rngs=abstract_build.host_rngs(0))
  return core.build_with_weights(make, items, CLIP_TEXT_RULES, f"CLIP text ({name})")


def clip_vision_from_transformers(src, *, dtype=jnp.float32, param_dtype=jnp.float32,
                                  remat: bool = False) -> clip.CLIPVisionModelWithProjection:
  """CLIPVisionModelWithProjection from its transformers twin, a CLIPModel, or a directory."""
  config_dict, items, name = io.read_model(src)
  config = clip.CLIPVisionConfig.from_transformers(config_dict)
  make = lambda: clip.CLIPVisionModelWithProjection(
      config, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=abstract_build.host_rngs(0))
  return core.build_with_weights(make, items, CLIP_VISION_RULES, f"CLIP vision ({name})")


def roberta_from_transformers(src, *, add_pooling_layer: bool = True, dtype=jnp.float32,
                              param_dtype=jnp.float32, remat: bool = False
                              ) -> roberta.RobertaModel:
  """RobertaModel from a transformers RobertaModel / RobertaForMaskedLM or a directory.

  Args:
    add_pooling_layer: build (and require weights for) the pooler. The hub's roberta-base
      checkpoint is a masked-LM one without pooler weights: pass False for it.
  """
  config_dict, items, name = io.read_model(src)
  config = roberta.RobertaConfig.from_transformers(config_dict)
  make = lambda: roberta.RobertaModel(config, add_pooling_layer=add_pooling_layer,
                                      dtype=dtype, param_dtype=param_dtype, remat=remat,
                                      rngs=abstract_build.host_rngs(0))
  return core.build_with_weights(make, items, ROBERTA_RULES, f"RoBERTa ({name})")
