"""The converted frozen backbone, loaded for the rest of the project.

A converted directory is made once by

  python -m vdit_jax.convert backbone --modelscope DIR --clip-vision DIR --roberta DIR --out DIR

(layout in vdit_jax.convert.backbone). `load_backbone` builds each tower abstractly (one
jitted trace that only materialises the dropout RNG state) and has Orbax read the parameters
straight into arrays with the requested shardings, so no random initialisation runs and no
parameter is placed twice.
"""

import json
import os
from typing import Any, Iterable, Mapping

import jax
import orbax.checkpoint as ocp
from flax import nnx

from vdit_jax.convert import backbone, core, io


class ConvertedBackboneError(ValueError):
  """The converted directory is missing, incomplete or does not match the models."""


def _error(directory: str, problem: str) -> ConvertedBackboneError:
  command = backbone.COMMAND.format(out=directory)
  return ConvertedBackboneError(f"{directory}: {problem}\nCreate it with:\n  {command}")


def read_manifest(directory: str | os.PathLike) -> dict:
  """The manifest.json of a converted backbone directory, checked for format and version."""
  directory = os.fspath(directory)
  path = os.path.join(directory, backbone.MANIFEST)
  if not os.path.isfile(path):
    what = "no converted backbone here" if os.path.isdir(directory) else "no such directory"
    raise _error(directory, f"{what} ({backbone.MANIFEST} not found)")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise _error(directory, f"{path} is not valid JSON ({e})") from e
  if (manifest.get("format"), manifest.get("format_version")) != (backbone.FORMAT,
                                                                  backbone.FORMAT_VERSION):
    raise _error(directory, f"{path} is format {manifest.get('format')!r} version "
                 f"{manifest.get('format_version')!r}, expected {backbone.FORMAT!r} version "
                 f"{backbone.FORMAT_VERSION}")
  return manifest


def _param_shardings(abstract: nnx.Module, paths: Iterable[core.Path], shardings
                     ) -> dict[core.Path, jax.sharding.Sharding]:
  """A concrete sharding for every parameter path (see `load_backbone`)."""
  if shardings is None:
    shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if isinstance(shardings, jax.sharding.Sharding):
    return {path: shardings for path in paths}
  if isinstance(shardings, jax.sharding.Mesh):
    # Towers are built without eager sharding; their annotations become NamedShardings on
    # the concrete mesh here (an eval_shape'd sharding would name an AbstractMesh, pitfall 6).
    specs = nnx.get_partition_spec(nnx.state(abstract, nnx.Param))
    return {tuple(path): jax.sharding.NamedSharding(shardings, spec.get_value())
            for path, spec in nnx.to_flat_state(specs)}
  raise TypeError(f"shardings must be None, a jax.sharding.Sharding or a Mesh, got "
                  f"{type(shardings).__name__}")


def _check_stored(directory: str, name: str, stored: Mapping, targets: Mapping) -> None:
  """Raises unless the checkpoint holds exactly the target paths with the target shapes."""
  stored_shapes = {tuple(str(p.key) for p in path): tuple(leaf.shape)
                   for path, leaf in jax.tree_util.tree_leaves_with_path(stored)}
  target_shapes = {tuple(str(p) for p in path): t.shape for path, t in targets.items()}
  missing = sorted(set(target_shapes) - set(stored_shapes))
  unexpected = sorted(set(stored_shapes) - set(target_shapes))
  mismatched = sorted(p for p in set(stored_shapes) & set(target_shapes)
                      if stored_shapes[p] != target_shapes[p])
  if missing or unexpected or mismatched:
    lines = [f"{'/'.join(p)}: {title}" for title, group in (
        ("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
             for p in group]
    raise _error(directory, f"the {name} parameters do not match the model its config.json "
                 f"builds:\n  " + "\n  ".join(lines[:20]))


def load_tower(directory: str, name: str, tower: backbone.Tower, dtype, shardings
               ) -> nnx.Module:
  """One converted tower, its parameters restored with the given dtype and shardings."""
  try:
    config = tower.config_from_dict(io.read_config(os.path.join(directory, name)))
  except (TypeError, ValueError) as e:  # io.WeightFileError included
    raise _error(directory, f"unusable {name} config: {e}") from e
  graphdef, params, rest = core.trace(lambda: backbone.build_tower(tower, config, dtype))
  abstract = nnx.merge(graphdef, params, rest)
  targets = core.target_shapes(abstract)
  placement = _param_shardings(abstract, targets, shardings)
  target_tree = backbone.nest({
      path: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=placement[path])
      for path, t in targets.items()})
  params_dir = os.path.join(directory, name, "params")
  if not os.path.isdir(params_dir):
    raise _error(directory, f"{params_dir} is missing")
  with backbone.params_checkpointer() as checkpointer:
    _check_stored(directory, name, checkpointer.metadata(params_dir).item_metadata.tree,
                  targets)
    restored = checkpointer.restore(params_dir, args=ocp.args.PyTreeRestore(
        target_tree, restore_args=ocp.checkpoint_utils.construct_restore_args(target_tree)))

  def stored(path):
    node = restored
    for part in path:
      node = node[str(part)]
    return node

  params = nnx.from_flat_state([(path, var.replace(stored(path)))
                                for path, var in nnx.to_flat_state(params)])
  return nnx.merge(graphdef, params, rest)


def load_backbone(directory: str | os.PathLike, *, towers: Iterable[str] | None = None,
                  dtype=None, shardings=None, registry: Mapping[str, backbone.Tower] | None = None
                  ) -> dict[str, nnx.Module]:
  """The converted towers as NNX modules.

  Args:
    directory: made by `python -m vdit_jax.convert backbone`.
    towers: names to load (unet, vae_encoder, clip_text, clip_vision, roberta); all by default.
    dtype: parameter and compute dtype (e.g. jnp.bfloat16); the stored dtype by default.
    shardings: where the parameters go. None: replicated on the first device. A
      jax.sharding.Sharding: every parameter gets it. A Mesh: each parameter is sharded by
      its nnx partition annotation (replicated where it has none).
    registry: tower name -> backbone.Tower; `backbone.backbone_towers()` by default.

  Raises:
    ConvertedBackboneError: naming the directory and the command that creates it.
  """
  directory = os.fspath(directory)
  manifest = read_manifest(directory)
  registry = backbone.backbone_towers() if registry is None else registry
  names = list(manifest["towers"]) if towers is None else list(towers)
  absent = [n for n in names if n not in manifest["towers"] or n not in registry]
  if absent:
    raise _error(directory, f"no converted tower {', '.join(absent)} (it has "
                 f"{', '.join(manifest['towers'])})")
  dtype = jax.numpy.dtype(dtype or manifest["dtype"])
  return {n: load_tower(directory, n, registry[n], dtype, shardings) for n in names}


def load_tokenizers(directory: str | os.PathLike) -> dict[str, Any]:
  """{'clip': CLIP tokenizer, 'roberta': RoBERTa tokenizer} of a converted directory."""
  directory = os.fspath(directory)
  manifest = read_manifest(directory)
  loaders = {name: spec[2] for name, spec in backbone.TOKENIZERS.items()}
  absent = [n for n in loaders if n not in manifest["tokenizers"]]
  if absent:
    raise _error(directory, f"no converted tokenizer {', '.join(absent)}")
  return {name: load(os.path.join(directory, "tokenizers", name))
          for name, load in loaders.items()}
