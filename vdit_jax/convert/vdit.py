"""VD-IT's trainable part (segmentation head and feature-extractor adapters) from the original's
state dict.

The original saves `model_without_ddp.state_dict()` of its `VDIT` module (VD-IT main.py:236):
the head at the top level (`transformer.*`, `class_embed.*`, ...), the diffusion feature
extractor under `backbone.0.diff_ftex.`, RoBERTa under `text_encoder.`. The port's modules
carry the same names (vdit_jax/models/head.py, extractor.py), so the tables here only drop
what is not converted:
  * the frozen towers (`backbone.0.diff_ftex.{unet,vae,text_encoder,cv_model}.`, RoBERTa
    `text_encoder.`), which `python -m vdit_jax.convert backbone` converts from their own
    releases, and `sentence_proj.`, computed by the original but never used;
  * aliases of modules registered twice: `transformer.decoder.bbox_embed.*` is the head's
    `bbox_embed` (diffvos_cross.py:158), `backbone.0.diff_ftex.act_{k+1}_postprocess.*` is
    `act_postprocess.{k}.*` (train_itcross_pn.py); each alias must equal its original.
"""

import re
from typing import Iterator, Mapping

import numpy as np

from vdit_jax import abstract_build
from vdit_jax.convert import core
from vdit_jax.models.head import ReferringHead

EXTRACTOR_PREFIX = "backbone.0.diff_ftex."
# Keys of modules the conversion leaves out (see the module docstring).
FROZEN_OR_UNUSED = (
    rf"{re.escape(EXTRACTOR_PREFIX)}(unet|vae|text_encoder|cv_model)\..*",
    r"text_encoder\..*",
    r"sentence_proj\..*",
)
# alias regex -> replacement giving the key it duplicates.
ALIASES = (
    (r"^transformer\.decoder\.bbox_embed\.", "bbox_embed."),
    (rf"^{re.escape(EXTRACTOR_PREFIX)}act_(\d+)_postprocess\.",
     lambda m: f"{EXTRACTOR_PREFIX}act_postprocess.{int(m.group(1)) - 1}."),
)
HEAD_RULES = core.Rules(ignore=FROZEN_OR_UNUSED + (rf"{re.escape(EXTRACTOR_PREFIX)}.*",))


def _alias_target(key: str) -> str | None:
  for pattern, replacement in ALIASES:
    if re.match(pattern, key):
      return re.sub(pattern, replacement, key, count=1)
  return None


def without_aliases(state_dict: Mapping[str, np.ndarray], what: str
                    ) -> Iterator[tuple[str, np.ndarray]]:
  """The state dict's items minus the alias keys, each checked equal to the key it duplicates.

  Raises:
    core.ConversionError: an alias whose original is missing, or whose value differs.
  """
  missing, mismatched = [], []
  for key, value in state_dict.items():
    target = _alias_target(key)
    if target is None:
      yield key, value
    elif target not in state_dict:
      missing.append(f"{target} (aliased by {key})")
    elif not np.array_equal(np.asarray(value), np.asarray(state_dict[target])):
      mismatched.append(f"{key}: differs from {target}, which it aliases")
  if missing or mismatched:
    raise core.ConversionError(what, missing=missing, mismatched=mismatched)


def vdit_head(state_dict: Mapping[str, np.ndarray], head_config: Mapping, *,
              what: str = "VD-IT head") -> ReferringHead:
  """The head of a VD-IT state dict (original key names, numpy or torch values) as a
  `ReferringHead(**head_config)` holding those weights.

  Keys of the extractor, the frozen towers and `sentence_proj` are skipped; aliases are
  checked and dropped; every other key must fill exactly one parameter.

  Raises:
    core.ConversionError: naming the missing, unexpected and mis-shaped keys.
  """
  items = ((k, _numpy(v)) for k, v in without_aliases(state_dict, what))
  make = lambda: ReferringHead(**head_config, rngs=abstract_build.host_rngs(0))
  return core.build_with_weights(make, items, HEAD_RULES, what)


def _numpy(value) -> np.ndarray:
  """A torch tensor (detached, on the CPU) or an array as numpy."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    return value.float().numpy() if str(value.dtype) == "torch.bfloat16" else value.numpy()
  return np.asarray(value)

