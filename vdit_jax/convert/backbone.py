"""The frozen VD-IT backbone: PyTorch checkpoints -> one converted directory.

  python -m vdit_jax.convert backbone --modelscope DIR --clip-vision DIR --roberta DIR \
      --out DIR [--dtype bfloat16|float32] [--overwrite]

Sources: --modelscope is damo-vilab/text-to-video-ms-1.7b in diffusers layout (unet/, vae/,
text_encoder/, tokenizer/, scheduler/), --clip-vision is laion/CLIP-ViT-H-14-laion2B-s32B-b79K
and --roberta is roberta-base, both in transformers layout.

Output layout (--out):
  manifest.json         format version, parameter dtype, towers (source directory, weights
                        file, tensor and parameter counts), tokenizers, package versions.
  <tower>/config.json   the tower's config (`Config.to_dict()`).
  <tower>/params/       an Orbax PyTree checkpoint of the tower's nnx.Params: a nested dict
                        keyed by the module's attribute path, list indices as strings
                        (`down_blocks/0/resnets/1/conv1/kernel`).
  tokenizers/clip/      ModelScope's CLIP BPE tokenizer (`vdit_jax.tokenizers` save format:
                        tokenizer.json, vocab.json, merges.txt, tokenizer_config.json).
  tokenizers/roberta/   roberta-base's BPE tokenizer, same files.
The towers are unet, vae_encoder and clip_text (from --modelscope), clip_vision and roberta.

Memory stays bounded by one tower: source tensors stream in one at a time, each converted
tensor becomes a jax.Array at once (Orbax, limited to _WRITE_CONCURRENT_GB in flight, then
adds little; with numpy leaves it would copy the whole tower), and a tower is written and
dropped before the next one is read. Everything is written into a hidden
directory beside --out and renamed at the end, so a failure leaves no partial --out.
"""

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from vdit_jax import preflight
from vdit_jax import tokenizers as vdit_tokenizers
from vdit_jax.convert import core, io
from vdit_jax.convert import diffusers as dconv
from vdit_jax.convert import transformers as tconv
from vdit_jax.models import clip, roberta, unet3d, vae

FORMAT = "vdit-jax-backbone"
FORMAT_VERSION = 1
MANIFEST = preflight.BACKBONE_MANIFEST
# Tokenizer name -> (source, subfolder holding its files, loader of such a directory).
TOKENIZERS = {"clip": ("modelscope", "tokenizer", vdit_tokenizers.clip_tokenizer),
              "roberta": ("roberta", "", vdit_tokenizers.roberta_tokenizer)}
_VERSIONED_PACKAGES = ("vdit-jax", "jax", "flax", "orbax-checkpoint", "numpy", "safetensors")
# Orbax writes at most this much at a time, so saving adds little to the tower in memory.
_WRITE_CONCURRENT_GB = 0.25
COMMAND = preflight.BACKBONE_COMMAND


@dataclasses.dataclass(frozen=True)
class Tower:
  """How one converted model is read, built and named.

  source / subfolder: where its PyTorch weights and config.json lie: a source name
    (modelscope, clip_vision or roberta) and a folder in it ("" for the source itself).
  config_from_source / config_from_dict: the config from the source's config.json, and
    from our own `to_dict()` output.
  build: build(config, *, dtype, param_dtype, rngs) -> the NNX module.
  rules: its PyTorch -> NNX rename table and ignore list.
  """
  source: str
  subfolder: str
  config_from_source: Callable[[dict], Any]
  config_from_dict: Callable[[dict], Any]
  build: Callable[..., nnx.Module]
  rules: core.Rules


def backbone_towers() -> dict[str, Tower]:
  """The five towers VD-IT runs, in conversion order (the slow UNet last)."""
  # VD-IT computes RoBERTa's pooler but never uses it (and roberta-base ships none).
  roberta_rules = dataclasses.replace(
      tconv.ROBERTA_RULES, ignore=(*tconv.ROBERTA_RULES.ignore, r"(roberta\.)?pooler\..*"))
  return {
      "vae_encoder": Tower("modelscope", "vae", vae.VAEEncoderConfig.from_diffusers,
                           vae.VAEEncoderConfig.from_dict, vae.VAEEncoder,
                           dconv.VAE_ENCODER_RULES),
      "clip_text": Tower("modelscope", "text_encoder", clip.CLIPTextConfig.from_transformers,
                         clip.CLIPTextConfig.from_dict, clip.CLIPTextTransformer,
                         tconv.CLIP_TEXT_RULES),
      "clip_vision": Tower("clip_vision", "", clip.CLIPVisionConfig.from_transformers,
                           clip.CLIPVisionConfig.from_dict, clip.CLIPVisionModelWithProjection,
                           tconv.CLIP_VISION_RULES),
      "roberta": Tower("roberta", "", roberta.RobertaConfig.from_transformers,
                       roberta.RobertaConfig.from_dict,
                       lambda config, **kw: roberta.RobertaModel(config, add_pooling_layer=False,
                                                                 **kw),
                       roberta_rules),
      "unet": Tower("modelscope", "unet", unet3d.UNet3DConfig.from_diffusers,
                    unet3d.UNet3DConfig.from_dict, unet3d.UNet3DConditionModel,
                    dconv.UNET3D_RULES),
  }


def build_tower(tower: Tower, config, dtype) -> nnx.Module:
  """The tower's module, meant to be built under a trace (nnx.eval_shape or jit).

  Partition annotations stay metadata (no eager sharding): placement is decided when the
  parameters are loaded. core.host_rngs keeps the RNG counters concrete under the trace.
  """
  with nnx.use_eager_sharding(False):
    return tower.build(config, dtype=dtype, param_dtype=dtype, rngs=core.host_rngs(0))


def abstract_tower(tower: Tower, config, dtype) -> nnx.Module:
  """The tower's module with ShapeDtypeStruct leaves: nothing is initialised."""
  return nnx.eval_shape(lambda: build_tower(tower, config, dtype))


def nest(flat: Mapping[core.Path, Any]) -> dict:
  """{('a', 0, 'w'): x} -> {'a': {'0': {'w': x}}}: the tree stored in `<tower>/params`."""
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(str(part), {})
    node[str(path[-1])] = value
  return tree


def params_checkpointer() -> ocp.Checkpointer:
  """The synchronous Orbax checkpointer that writes and reads `<tower>/params`."""
  gb = _WRITE_CONCURRENT_GB
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(
      save_concurrent_gb=gb, save_device_host_concurrent_gb=gb, restore_concurrent_gb=gb))


def read_source(tower: Tower, source_dir: str) -> tuple[dict, Any, str]:
  """(config.json dict, tower config, weights file) of a tower's source directory."""
  config_dict = io.read_config(source_dir)
  try:
    config = tower.config_from_source(config_dict)
  except (TypeError, ValueError) as e:
    raise io.WeightFileError(f"{os.path.join(source_dir, 'config.json')}: {e}") from e
  return config_dict, config, io.find_weights(source_dir)


def convert_tower(name: str, tower: Tower, source_dir: str, source: tuple[dict, Any, str],
                  out_dir: str, dtype) -> dict:
  """Converts one tower into `out_dir`; returns its manifest entry.

  source: `read_source(tower, source_dir)`, read up front so bad input fails before work.
  """
  config_dict, config, weights = source
  targets = core.target_shapes(abstract_tower(tower, config, dtype))
  params = {}

  def keep(path, value):
    params[path] = jax.device_put(value)

  core.convert_tensors(io.iter_tensors(weights), targets, tower.rules,
                       what=f"{name} ({weights})", dtype=dtype, on_tensor=keep)
  os.makedirs(out_dir)
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config.to_dict(), f, indent=2)
  with params_checkpointer() as checkpointer:
    checkpointer.save(os.path.join(out_dir, "params"), args=ocp.args.PyTreeSave(nest(params)))
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


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _replace_dir(new: str, out: str) -> None:
  """Moves `new` to `out`, replacing what `out` held only once `new` is in place."""
  if not os.path.exists(out):
    os.rename(new, out)
    return
  old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
  os.rename(out, os.path.join(old, "out"))
  os.rename(new, out)
  shutil.rmtree(old)


def convert_backbone(sources: Mapping[str, str], out: str | os.PathLike, *, dtype: str = "float32",
                     overwrite: bool = False, towers: Mapping[str, Tower] | None = None,
                     tokenizers: Mapping[str, tuple[str, str, Callable]] = TOKENIZERS) -> dict:
  """Converts every tower and tokenizer into `out`; returns the manifest.

  Args:
    sources: source name ("modelscope", "clip_vision", "roberta") -> directory.
    out: the output directory; created atomically.
    dtype: parameter dtype of the output, "float32" or "bfloat16".
    overwrite: replace an existing `out` (only after the new one is complete).
    towers: name -> Tower; `backbone_towers()` by default.
    tokenizers: name -> (source, subfolder, loader) of the tokenizers to carry.

  Raises:
    FileExistsError: `out` exists and `overwrite` is False.
    io.WeightFileError: a source directory, config or weights file is missing or corrupt.
    core.ConversionError: a tower's weights do not cover its module exactly.
  """
  towers = backbone_towers() if towers is None else towers
  needed = {t.source for t in towers.values()} | {t[0] for t in tokenizers.values()}
  absent = sorted(needed - {k for k, v in sources.items() if v})
  if absent:
    raise ValueError(f"no source directory given for: {', '.join(absent)}")
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
  for name in sorted(needed):
    if not os.path.isdir(sources[name]):
      raise io.WeightFileError(f"{sources[name]}: no such directory (the {name} source)")
  tower_dirs = {name: _source_dir(sources, t.source, t.subfolder) for name, t in towers.items()}
  # Fail on a missing config or weights file before any work.
  read = {name: read_source(tower, tower_dirs[name]) for name, tower in towers.items()}
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=os.path.dirname(out))
  try:
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0o700 would otherwise become --out's mode
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "sources": {k: os.path.abspath(v) for k, v in sources.items() if k in needed},
                "towers": {}, "tokenizers": {}, "versions": _versions()}
    for name, (source, subfolder, load) in tokenizers.items():
      source_dir = _source_dir(sources, source, subfolder)
      files = save_tokenizer(load, source_dir, os.path.join(tmp, "tokenizers", name))
      manifest["tokenizers"][name] = {"source": source_dir, "files": files}
    for name, tower in towers.items():
      manifest["towers"][name] = convert_tower(name, tower, tower_dirs[name], read[name],
                                               os.path.join(tmp, name), jnp.dtype(dtype))
    with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
      json.dump(manifest, f, indent=2)
    _replace_dir(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest
