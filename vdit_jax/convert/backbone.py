"""The frozen VD-IT backbone: PyTorch checkpoints -> one converted directory.

  python -m vdit_jax.convert backbone --modelscope DIR --clip-vision DIR --roberta DIR \
      --out DIR [--dtype bfloat16|float32] [--overwrite]

Sources: --modelscope is damo-vilab/text-to-video-ms-1.7b in diffusers layout (unet/, vae/,
text_encoder/, tokenizer/, scheduler/), --clip-vision is laion/CLIP-ViT-H-14-laion2B-s32B-b79K
and --roberta is roberta-base, both in transformers layout.

Output layout (--out): see vdit_jax.backbone_format. The towers are unet, vae_encoder and
clip_text (from --modelscope), clip_vision and roberta.

Memory stays bounded by one tower: source tensors stream in one at a time, each converted
tensor becomes a jax.Array at once (Orbax, limited to _WRITE_CONCURRENT_GB in flight, then
adds little; with numpy leaves it would copy the whole tower), and a tower is written and
dropped before the next one is read. Everything is written into a hidden
directory beside --out and renamed at the end (vdit_jax.atomic_dir), so a failure leaves no
partial --out.
"""

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from vdit_jax import abstract_build, atomic_dir, backbone_format, pretrained, towers
from vdit_jax import tokenizers as vdit_tokenizers
from vdit_jax.convert import core, io
from vdit_jax.convert import diffusers as dconv
from vdit_jax.convert import transformers as tconv
from vdit_jax.models import clip, roberta, unet3d, vae

# Tokenizer name -> (source, subfolder holding its files); `vdit_tokenizers.LOADERS` reads
# them.
TOKENIZER_SOURCES = {"clip": ("modelscope", "tokenizer"), "roberta": ("roberta", "")}
_VERSIONED_PACKAGES = ("vdit-jax", "jax", "flax", "orbax-checkpoint", "numpy", "safetensors")


@dataclasses.dataclass(frozen=True)
class Tower:
  """Where one tower's PyTorch weights come from and how they map onto its module.

  source / subfolder: where its PyTorch weights and config.json lie: a source name
    (modelscope, clip_vision or roberta) and a folder in it ("" for the source itself).
  config_from_source: the architecture from the source's config.json.
  rules: its PyTorch -> NNX rename table and ignore list.
  spec: how the module is built (`vdit_jax.towers`).
  """
  source: str
  subfolder: str
  config_from_source: Callable[[dict], Any]
  rules: core.Rules
  spec: towers.TowerSpec


def backbone_towers() -> dict[str, Tower]:
  """The towers of `backbone_format.TOWERS`, in conversion order."""
  specs = towers.tower_specs()
  # VD-IT computes RoBERTa's pooler but never uses it (and roberta-base ships none).
  roberta_rules = dataclasses.replace(
      tconv.ROBERTA_RULES, ignore=(*tconv.ROBERTA_RULES.ignore, r"(roberta\.)?pooler\..*"))
  sources = {
      "vae_encoder": ("modelscope", "vae", vae.VAEEncoderConfig.from_diffusers,
                      dconv.VAE_ENCODER_RULES),
      "clip_text": ("modelscope", "text_encoder", clip.CLIPTextConfig.from_transformers,
                    tconv.CLIP_TEXT_RULES),
      "clip_vision": ("clip_vision", "", clip.CLIPVisionConfig.from_transformers,
                      tconv.CLIP_VISION_RULES),
      "roberta": ("roberta", "", roberta.RobertaConfig.from_transformers, roberta_rules),
      "unet": ("modelscope", "unet", unet3d.UNet3DConfig.from_diffusers, dconv.UNET3D_RULES),
  }
  return {name: Tower(*sources[name], spec=specs[name]) for name in backbone_format.TOWERS}


def abstract_tower(name: str, tower: Tower, config, dtype: str) -> nnx.Module:
  """The tower's module with ShapeDtypeStruct leaves: nothing is initialised."""
  settings = {"dtype": dtype, "param_dtype": dtype}
  return nnx.eval_shape(lambda: towers.build(name, tower.spec, config, settings,
                                             rngs=abstract_build.host_rngs(0)))


def read_source(tower: Tower, source_dir: str) -> tuple[dict, Any, str]:
  """(config.json dict, tower config, weights file) of a tower's source directory."""
  config_dict = io.read_config(source_dir)
  try:
    config = tower.config_from_source(config_dict)
  except (TypeError, ValueError) as e:
    raise io.WeightFileError(f"{os.path.join(source_dir, 'config.json')}: {e}") from e
  return config_dict, config, io.find_weights(source_dir)


def convert_tower(name: str, tower: Tower, source_dir: str, source: tuple[dict, Any, str],
                  root: str, dtype: str) -> dict:
  """Writes one tower's config.json and params/ into the directory `root`; returns its
  manifest entry.

  source: `read_source(tower, source_dir)`, read up front so bad input fails before work.
  """
  config_dict, config, weights = source
  targets = abstract_build.param_shapes(abstract_tower(name, tower, config, dtype))
  params = {}

  def keep(path, value):
    params[path] = jax.device_put(value)

  core.convert_tensors(io.iter_tensors(weights), targets, tower.rules,
                       what=f"{name} ({weights})", dtype=jnp.dtype(dtype), on_tensor=keep)
  config_path = backbone_format.config_path(root, name)
  os.makedirs(os.path.dirname(config_path))
  with open(config_path, "w", encoding="utf-8") as f:
    json.dump(config.to_dict(), f, indent=2)
  with pretrained.params_checkpointer() as checkpointer:
    checkpointer.save(backbone_format.params_path(root, name),
                      args=ocp.args.PyTreeSave(pretrained.nest(params)))
  source_version = config_dict.get("_diffusers_version") or config_dict.get("transformers_version")
  return {"source": source_dir, "weights": weights, "source_version": source_version,
          "tensors": len(params),
          "parameters": sum(math.prod(t.shape) for t in targets.values())}


def save_tokenizer(load: Callable[[str], Any], source_dir: str, out_dir: str) -> list[str]:
  """Loads a tokenizer from a hub directory and saves it into `out_dir`; returns the files."""
  try:
    tokenizer = load(source_dir)
  except (OSError, ValueError) as e:
    raise io.WeightFileError(f"{source_dir}: cannot load the tokenizer ({e})") from e
  tokenizer.save(out_dir)
  return sorted(os.listdir(out_dir))


def _versions() -> dict[str, str | None]:
  versions = {}
  for package in _VERSIONED_PACKAGES:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  return versions


def _source_dir(sources: Mapping[str, str], source: str, subfolder: str) -> str:
  return os.path.join(os.path.abspath(sources[source]), subfolder).rstrip(os.sep)


def convert_backbone(sources: Mapping[str, str], out: str | os.PathLike, *, dtype: str = "float32",
                     overwrite: bool = False, towers_to_convert: Mapping[str, Tower] | None = None,
                     tokenizers: Mapping[str, tuple[str, str]] = TOKENIZER_SOURCES) -> dict:
  """Converts every tower and tokenizer into `out`; returns the manifest.

  Args:
    sources: source name ("modelscope", "clip_vision", "roberta") -> directory.
    out: the output directory; created atomically.
    dtype: parameter dtype of the output, "float32" or "bfloat16".
    overwrite: replace an existing `out` (only after the new one is complete).
    towers_to_convert: name -> Tower; `backbone_towers()` by default.
    tokenizers: name -> (source, subfolder) of the tokenizers to carry; each is read with
      `vdit_tokenizers.LOADERS[name]`.

  Raises:
    errors.UserError: `out` exists and `overwrite` is False.
    io.WeightFileError: a source directory, config or weights file is missing or corrupt.
    core.ConversionError: a tower's weights do not cover its module exactly.
  """
  towers_to_convert = backbone_towers() if towers_to_convert is None else towers_to_convert
  needed = ({t.source for t in towers_to_convert.values()}
            | {source for source, _ in tokenizers.values()})
  absent = sorted(needed - {k for k, v in sources.items() if v})
  if absent:
    raise io.WeightFileError(f"no source directory given for: {', '.join(absent)}")
  if dtype not in ("float32", "bfloat16"):
    raise io.WeightFileError(f"dtype must be float32 or bfloat16, got {dtype!r}")
  for name in sorted(needed):
    if not os.path.isdir(sources[name]):
      raise io.WeightFileError(f"{sources[name]}: no such directory (the {name} source)")
  tower_dirs = {name: _source_dir(sources, t.source, t.subfolder)
                for name, t in towers_to_convert.items()}
  # Fail on a missing config or weights file before any work.
  read = {name: read_source(tower, tower_dirs[name])
          for name, tower in towers_to_convert.items()}
  with atomic_dir.atomic_directory(out, overwrite=overwrite) as tmp:
    manifest = {"format": backbone_format.FORMAT,
                "format_version": backbone_format.FORMAT_VERSION, "dtype": dtype,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "sources": {k: os.path.abspath(v) for k, v in sources.items() if k in needed},
                "towers": {}, "tokenizers": {}, "versions": _versions()}
    for name, (source, subfolder) in tokenizers.items():
      source_dir = _source_dir(sources, source, subfolder)
      files = save_tokenizer(vdit_tokenizers.LOADERS[name], source_dir,
                             backbone_format.tokenizer_dir(tmp, name))
      manifest["tokenizers"][name] = {"source": source_dir, "files": files}
    for name, tower in towers_to_convert.items():
      manifest["towers"][name] = convert_tower(name, tower, tower_dirs[name], read[name], tmp,
                                               dtype)
    with open(backbone_format.manifest_path(tmp), "w", encoding="utf-8") as f:
      json.dump(manifest, f, indent=2)
  return manifest
