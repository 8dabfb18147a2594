"""VD-IT's trainable part (segmentation head and feature-extractor adapters) from the original's
checkpoint.

  python -m vdit_jax.convert vdit --checkpoint vdit.pth --out DIR [--config configs/ytvos.py]

The original saves `model_without_ddp.state_dict()` of its `VDIT` module (VD-IT main.py:236):
the head at the top level (`transformer.*`, `class_embed.*`, ...), the diffusion feature
extractor under `backbone.0.diff_ftex.`, RoBERTa under `text_encoder.`. The port's modules
carry the same names (vdit_jax/models/head.py, extractor.py), so the tables here only drop
what is not converted:
  * the frozen towers (`backbone.0.diff_ftex.{unet,vae,text_encoder,cv_model}.`, RoBERTa
    `text_encoder.`), which `python -m vdit_jax.convert backbone` converts from their own
    releases, and `sentence_proj.`, computed by the original but never used;
  * aliases of modules registered twice: `transformer.decoder.bbox_embed.*` is the head's
    `bbox_embed` (diffvos_cross.py:160), `backbone.0.diff_ftex.act_{k+1}_postprocess.*` is
    `act_postprocess.{k}.*` (train_itcross_pn.py:174-231); each alias must equal its original.
Head keys become `head/<key>`, `backbone.0.diff_ftex.<key>` becomes `extractor/<key>`: the
trainable parameters of `vdit_jax.models.vdit.VDIT`.

The output is an export directory (vdit_jax.checkpoints: params/, config.json,
manifest.json) that `config.init_from`, `--config.eval.checkpoint` and prediction load. The
released file also holds the optimizer state, the LR scheduler, the epoch, the run's argparse
`args` and the AMP grad scaler (main.py:236-243), frozen towers included about 10 GB in fp32:
it is memory-mapped, unpickled with torch's weights_only loader plus the two classes that
layout needs (`IO_GLOBALS`), and only the trainable tensors (about 120 MB) are read.
"""

import argparse
import collections
import datetime
import json
import os
import re
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from vdit_jax import abstract_build, atomic_dir, checkpoints, pretrained, towers, train_state
from vdit_jax.convert import core, io
from vdit_jax.models import vdit as vdit_lib
from vdit_jax.models.extractor import TOWERS_USED
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
# The whole trainable part: the extractor's keys under `extractor`, every other one (the
# head's) under `head`, as VDIT names them.
VDIT_RULES = core.Rules(renames=((rf"^{re.escape(EXTRACTOR_PREFIX)}", "extractor."),
                                 (r"^(?!extractor\.)", "head.")),
                        ignore=FROZEN_OR_UNUSED)
# The classes the released file's pickle builds besides tensors and containers: the run's
# `args` (an argparse.Namespace, main.py:241) and MultiStepLR's `milestones` (a Counter,
# which recent torch allows by default; named for the others).
IO_GLOBALS = (argparse.Namespace, collections.Counter)


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



def trainable_targets(config) -> tuple[dict[abstract_build.Path, jax.ShapeDtypeStruct],
                                       dict[str, Any]]:
  """(VDIT's trainable parameter path -> shape, backbone reference) for `config.model`.

  The adapters' widths follow the towers: for a config with random towers (weights_dir "",
  the tiny variant) those of `config.model.random_towers`, with that config's own backbone
  reference; otherwise the released towers VD-IT was trained on
  (`towers.released_architectures()`, `checkpoints.released_reference()`). Built from shapes
  alone, without the towers (whose parameters only the architectures matter for here).
  """
  model = config.model
  if not model.weights_dir and model.random_towers:
    specs = towers.tower_specs()
    architectures = {name: towers.architecture(name, specs[name], model.random_towers[name])
                     for name in TOWERS_USED}
    reference = checkpoints.backbone_reference(model, config.seed)
  else:
    architectures = towers.released_architectures()
    reference = checkpoints.released_reference()
  abstract = nnx.eval_shape(lambda: vdit_lib.VDIT(
      {}, *vdit_lib.trainable_modules(config, architectures), head_frames=model.head_frames))
  params = train_state.split(abstract).params
  targets = {tuple(path): jax.ShapeDtypeStruct(var.shape, var.dtype)
             for path, var in nnx.to_flat_state(params)}
  return targets, reference


def convert_state_dict(state_dict: Mapping[str, np.ndarray],
                       targets: Mapping[abstract_build.Path, jax.ShapeDtypeStruct], *,
                       what: str, dtype=None) -> dict[abstract_build.Path, np.ndarray]:
  """The trainable parameters (target path -> array) of an original state dict without its
  frozen and unused keys (FROZEN_OR_UNUSED), aliases included.

  Raises:
    core.ConversionError: naming the missing, unexpected, mis-shaped and mismatched-alias keys.
  """
  return core.convert_tensors(without_aliases(state_dict, what), targets, VDIT_RULES,
                              what=what, dtype=dtype)


def read_released(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(the trainable tensors of a released checkpoint, by original key, as numpy; what else it
  says: {"epoch", "step"}).

  `path` is the dict main.py saves (its `model` is the state dict) or a bare state dict.
  Keys matching FROZEN_OR_UNUSED are dropped unread.

  Raises:
    io.WeightFileError: unreadable, refused by the weights_only loader, or not that layout.
  """
  import torch  # Only for reading the PyTorch pickle.

  loaded = io.load_torch(path, allowed_globals=IO_GLOBALS)
  state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
  if not isinstance(state, dict):
    raise io.WeightFileError(f"{path}: expected VD-IT's checkpoint (a dict with 'model') or a "
                             f"state dict, found {type(loaded).__name__}")
  skip = core.Rules(ignore=FROZEN_OR_UNUSED)
  arrays = {}
  for key, value in state.items():
    if skip.rename(key) is None:
      continue
    if not isinstance(value, torch.Tensor):
      where = "['model']" if state is not loaded else ""
      raise io.WeightFileError(f"{path}: {where}[{key!r}] is a {type(value).__name__}, not a "
                               "tensor")
    arrays[key] = io.tensor_array(value)
  return arrays, {"epoch": loaded.get("epoch"), "step": _optimizer_step(loaded)}


def _optimizer_step(loaded: Mapping[str, Any]) -> int:
  """The original's update count: AdamW's per-parameter `step` (torch.optim.AdamW's state
  dict), 0 for a file without optimizer state."""
  states = loaded.get("optimizer", {}).get("state", {})
  return max((int(s["step"]) for s in states.values() if "step" in s), default=0)


def convert_vdit(checkpoint: str, out: str | os.PathLike, *, config, dtype: str = "float32",
                 overwrite: bool = False) -> dict[str, Any]:
  """Writes the trainable part of a released VD-IT checkpoint as an export directory `out`
  (created atomically); returns its manifest.

  Args:
    checkpoint: the original's .pth (module docstring).
    out: the export directory (vdit_jax.checkpoints).
    config: the experiment config whose model the parameters are for (`trainable_targets`).
    dtype: parameter dtype of the output, one of checkpoints.EXPORT_DTYPES.
    overwrite: replace an existing `out` (only once the new one is complete).

  Raises:
    errors.UserError: `out` exists and `overwrite` is False.
    io.WeightFileError: the checkpoint cannot be read safely, or is not VD-IT's layout.
    core.ConversionError: its keys do not fill the trainable parameters exactly.
  """
  if dtype not in checkpoints.EXPORT_DTYPES:
    raise io.WeightFileError(f"dtype must be one of {checkpoints.EXPORT_DTYPES}, got {dtype!r}")
  checkpoint = os.path.abspath(checkpoint)
  with atomic_dir.atomic_directory(out, overwrite=overwrite) as tmp:
    targets, reference = trainable_targets(config)
    arrays, info = read_released(checkpoint)
    params = convert_state_dict(arrays, targets, what=f"VD-IT checkpoint {checkpoint}",
                                dtype=jnp.dtype(dtype))
    del arrays
    with pretrained.params_checkpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, "params"), args=ocp.args.PyTreeSave(
          pretrained.nest({path: jnp.asarray(x) for path, x in params.items()})))
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
    manifest = {"step": info["step"], "epoch": info["epoch"], "dtype": dtype,
                "converted_from": checkpoint, "backbone": reference,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
      json.dump(manifest, f, indent=2)
  return manifest
