"""The frozen towers VD-IT runs, and how each is built from an architecture and run-time settings.

A tower's architecture (widths, depths, heads, vocabulary) travels with its converted weights
(`vdit_jax.backbone_format`); its run-time settings come from the experiment config,
`config.model.towers.<name>`: `dtype` and `param_dtype` for every tower, plus the keyword
arguments its module takes (`remat`; the UNet's `skip_temporal_if_single_frame` and
`temporal_dropout`). A setting a tower does not take is an error naming both, so a typo in
`--config.model.towers.unet.rmat=True` fails instead of being ignored.
"""

import dataclasses
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdit_jax import abstract_build, errors
from vdit_jax.models import clip, roberta, unet3d, vae

_DTYPES = ("float32", "bfloat16", "float16")


class TowerSettingsError(errors.UserError, ValueError):
  """A tower's run-time settings name an option it does not take, or a bad dtype."""


@dataclasses.dataclass(frozen=True)
class TowerSpec:
  """How one tower is built.

  config_class: the architecture dataclass (`from_dict` / `to_dict`).
  build: build(config, *, dtype, param_dtype, rngs, **options) -> the NNX module.
  options: the run-time keyword arguments of `build` besides the dtypes.
  """
  config_class: Any
  build: Callable[..., nnx.Module]
  options: tuple[str, ...] = ()


def _roberta_without_pooler(config: roberta.RobertaConfig, **kwargs) -> roberta.RobertaModel:
  # VD-IT computes RoBERTa's pooler output but never uses it (and roberta-base ships none).
  return roberta.RobertaModel(config, add_pooling_layer=False, **kwargs)


def tower_specs() -> dict[str, TowerSpec]:
  """The five towers, by the names of `backbone_format.TOWERS`."""
  return {
      "vae_encoder": TowerSpec(vae.VAEEncoderConfig, vae.VAEEncoder),
      "clip_text": TowerSpec(clip.CLIPTextConfig, clip.CLIPTextTransformer, ("remat",)),
      "clip_vision": TowerSpec(clip.CLIPVisionConfig, clip.CLIPVisionModelWithProjection,
                               ("remat",)),
      "roberta": TowerSpec(roberta.RobertaConfig, _roberta_without_pooler, ("remat",)),
      "unet": TowerSpec(unet3d.UNet3DConfig, unet3d.UNet3DConditionModel,
                        ("remat", "skip_temporal_if_single_frame", "temporal_dropout")),
  }


# The released checkpoints VD-IT freezes, per tower: the hub repository (and its folder).
RELEASED_SOURCES = {
    "vae_encoder": "damo-vilab/text-to-video-ms-1.7b/vae",
    "clip_text": "damo-vilab/text-to-video-ms-1.7b/text_encoder",
    "clip_vision": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "roberta": "roberta-base",
    "unet": "damo-vilab/text-to-video-ms-1.7b/unet",
}


def released_architectures() -> dict[str, Any]:
  """The architectures of the checkpoints VD-IT freezes (RELEASED_SOURCES), as their
  config.json files give them, for work from shapes alone (parameter counts, the memory
  planner, `convert vdit`) and to recognise a converted backbone of those releases."""
  return {
      "vae_encoder": vae.VAEEncoderConfig(),
      "clip_text": clip.CLIPTextConfig(hidden_size=1024, intermediate_size=4096,
                                       num_hidden_layers=23, num_attention_heads=16,
                                       hidden_act="gelu", eos_token_id=2),
      "clip_vision": clip.CLIPVisionConfig(hidden_size=1280, intermediate_size=5120,
                                           projection_dim=1024, num_hidden_layers=32,
                                           num_attention_heads=16, patch_size=14,
                                           hidden_act="gelu"),
      "roberta": roberta.RobertaConfig(),
      "unet": unet3d.UNet3DConfig.from_diffusers(unet3d.MODELSCOPE_CONFIG),
  }


def _dtype(name: str, key: str, value) -> jnp.dtype:
  if str(value) not in _DTYPES:
    raise TowerSettingsError(f"tower {name!r}: {key}={value!r} is not one of {_DTYPES}")
  return jnp.dtype(str(value))


def build_kwargs(name: str, spec: TowerSpec, settings: Mapping[str, Any]) -> dict[str, Any]:
  """The keyword arguments of `spec.build` from a tower's settings, checked.

  Raises:
    TowerSettingsError: naming the tower and the unknown or missing key.
  """
  known = ("dtype", "param_dtype") + spec.options
  unknown = sorted(set(settings) - set(known))
  if unknown:
    raise TowerSettingsError(f"tower {name!r} has no setting {', '.join(map(repr, unknown))} "
                             f"(its settings: {', '.join(known)})")
  absent = [key for key in ("dtype", "param_dtype") if key not in settings]
  if absent:
    raise TowerSettingsError(f"tower {name!r}: settings lack {', '.join(absent)}")
  kwargs = dict(settings)
  for key in ("dtype", "param_dtype"):
    kwargs[key] = _dtype(name, key, settings[key])
  return kwargs


def build(name: str, spec: TowerSpec, config, settings: Mapping[str, Any], *,
          rngs: nnx.Rngs) -> nnx.Module:
  """The tower's module. Partition annotations stay metadata (no eager sharding): placement is
  decided where parameters are loaded or initialised."""
  with nnx.use_eager_sharding(False):
    return spec.build(config, rngs=rngs, **build_kwargs(name, spec, settings))


def architecture(name: str, spec: TowerSpec, fields: Mapping[str, Any]):
  """The architecture dataclass of a tower from a dict (stored config.json or the config)."""
  try:
    return spec.config_class.from_dict(dict(fields))
  except (TypeError, ValueError) as e:
    raise TowerSettingsError(f"tower {name!r}: bad architecture: {e}") from e


def _random_value(path: abstract_build.Path, shape: tuple[int, ...], dtype,
                  rng: np.random.Generator) -> np.ndarray:
  """A stand-in for a pretrained parameter: norm scales 1, biases 0, kernels N(0, 1/fan_in),
  embeddings and other tables N(0, 0.02^2)."""
  leaf = path[-1]
  if leaf == "scale":
    value = np.ones(shape)
  elif leaf == "bias":
    value = np.zeros(shape)
  elif leaf == "kernel":
    value = rng.standard_normal(shape) / np.sqrt(max(1, int(np.prod(shape[:-1]))))
  else:
    value = 0.02 * rng.standard_normal(shape)
  return value.astype(dtype)


def random_tower(name: str, fields: Mapping[str, Any], settings: Mapping[str, Any], *,
                 seed: int, specs: Mapping[str, TowerSpec] | None = None) -> nnx.Module:
  """One random tower (tests, the tiny demo) of the architecture `fields`
  (`config.model.random_towers.<name>`) with its run-time settings.

  The module is traced, not initialised, and its parameters drawn on the host: initialising
  a tower with JAX compiles one random-number program per parameter shape, which took
  tens of seconds even at the tiny sizes.
  """
  specs = tower_specs() if specs is None else specs
  if name not in specs:
    raise TowerSettingsError(f"no tower named {name} (towers: {', '.join(specs)})")
  spec = specs[name]
  config = architecture(name, spec, fields)
  graphdef, params, rest = abstract_build.trace(
      lambda: build(name, spec, config, settings, rngs=abstract_build.host_rngs(seed)))
  rng = np.random.default_rng(seed)
  params = nnx.from_flat_state([
      (path, var.replace(jnp.asarray(_random_value(path, var.shape, var.dtype, rng))))
      for path, var in nnx.to_flat_state(params)])
  return nnx.merge(graphdef, params, rest)


def random_towers(architectures: Mapping[str, Mapping[str, Any]],
                  settings: Mapping[str, Mapping[str, Any]], *, seed: int = 0,
                  specs: Mapping[str, TowerSpec] | None = None) -> dict[str, nnx.Module]:
  """Randomly initialised towers: name -> module, tower i seeded with seed + i.

  Args:
    architectures: tower name -> architecture fields (`config.model.random_towers`).
    settings: tower name -> run-time settings (`config.model.towers`); every tower in
      `architectures` needs an entry.
    seed: the parameter seed.
    specs: name -> TowerSpec; `tower_specs()` by default.
  """
  unset = sorted(set(architectures) - set(settings))
  if unset:
    raise TowerSettingsError(f"no run-time settings for tower {', '.join(unset)}")
  return {name: random_tower(name, fields, settings[name], seed=seed + i, specs=specs)
          for i, (name, fields) in enumerate(architectures.items())}
