"""The converted frozen backbone, loaded for the rest of the project.

A converted directory (layout in `vdit_jax.backbone_format`) is made once by

  python -m vdit_jax.convert backbone --modelscope DIR --clip-vision DIR --roberta DIR --out DIR

`load_backbone` builds each tower abstractly from its stored architecture and the run-time
settings of the experiment config (one jitted trace that only materialises the dropout RNG
state) and has Orbax read the parameters straight into arrays with the requested dtype and
shardings, so no random initialisation runs and no parameter is placed twice.
"""

import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from flax import nnx

from vdit_jax import abstract_build, backbone_format, towers
from vdit_jax.backbone_format import ConvertedBackboneError


def params_checkpointer() -> ocp.Checkpointer:
  """The synchronous Orbax checkpointer that writes and reads `<tower>/params`."""
  gb = backbone_format.CHECKPOINT_CONCURRENT_GB
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(
      save_concurrent_gb=gb, save_device_host_concurrent_gb=gb, restore_concurrent_gb=gb))


def nest(flat: Mapping[abstract_build.Path, Any]) -> dict:
  """{('a', 0, 'w'): x} -> {'a': {'0': {'w': x}}}: the tree stored in `<tower>/params`."""
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(str(part), {})
    node[str(path[-1])] = value
  return tree


def _param_shardings(name: str, abstract: nnx.Module,
                     targets: Mapping[abstract_build.Path, jax.ShapeDtypeStruct], shardings
                     ) -> dict[abstract_build.Path, jax.sharding.Sharding]:
  """A concrete sharding for every parameter path of tower `name` (see `load_backbone`)."""
  if shardings is None:
    shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if isinstance(shardings, jax.sharding.Sharding):
    return {path: shardings for path in targets}
  if isinstance(shardings, jax.sharding.Mesh):
    # Towers are built without eager sharding; their annotations become NamedShardings on
    # the concrete mesh here (an eval_shape'd sharding would name an AbstractMesh).
    specs = nnx.get_partition_spec(nnx.state(abstract, nnx.Param))
    return {tuple(path): jax.sharding.NamedSharding(shardings, spec.get_value())
            for path, spec in nnx.to_flat_state(specs)}
  if callable(shardings):
    return {path: shardings((name,) + path, target) for path, target in targets.items()}
  raise TypeError(f"shardings must be None, a jax.sharding.Sharding, a Mesh or a callable, "
                  f"got {type(shardings).__name__}")


def stored_shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Path -> shape of every leaf of a `nest`ed tree (or an Orbax metadata tree of one)."""
  return {tuple(str(p.key) for p in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def shape_mismatches(stored: Mapping[tuple[str, ...], tuple[int, ...]],
                     wanted: Mapping[tuple[str, ...], tuple[int, ...]]) -> list[str]:
  """'a/b: missing' (wanted, not stored), 'a/b: unexpected' (the reverse) and 'a/b: shape S
  stored, W expected' lines, in that order; empty when both hold the same shapes."""
  both = sorted(set(stored) & set(wanted))
  return ([f"{'/'.join(p)}: missing" for p in sorted(set(wanted) - set(stored))]
          + [f"{'/'.join(p)}: unexpected" for p in sorted(set(stored) - set(wanted))]
          + [f"{'/'.join(p)}: shape {stored[p]} stored, {wanted[p]} expected" for p in both
             if tuple(stored[p]) != tuple(wanted[p])])


def _check_stored(directory: str, name: str, stored: Mapping, targets: Mapping) -> None:
  """Raises unless the checkpoint holds exactly the target paths with the target shapes."""
  lines = shape_mismatches(stored_shapes(stored), {tuple(str(p) for p in path): t.shape
                                                   for path, t in targets.items()})
  if lines:
    raise ConvertedBackboneError(directory, f"the {name} parameters do not match the model "
                                 f"its config.json builds:\n  " + "\n  ".join(lines[:20]))


def load_tower(directory: str, name: str, spec: towers.TowerSpec, settings: Mapping[str, Any],
               shardings) -> nnx.Module:
  """One converted tower with the given run-time settings, dtype and shardings."""
  try:
    config = towers.architecture(name, spec, backbone_format.read_tower_config(directory, name))
  except towers.TowerSettingsError as e:
    raise ConvertedBackboneError(directory, f"unusable {name} config: {e}") from e
  graphdef, params, rest = abstract_build.trace(
      lambda: towers.build(name, spec, config, settings, rngs=abstract_build.host_rngs(0)))
  abstract = nnx.merge(graphdef, params, rest)
  targets = abstract_build.param_shapes(abstract)
  placement = _param_shardings(name, abstract, targets, shardings)
  target_tree = nest({path: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=placement[path])
                      for path, t in targets.items()})
  params_dir = backbone_format.params_path(directory, name)
  if not os.path.isdir(params_dir):
    raise ConvertedBackboneError(directory, f"{params_dir} is missing")
  with params_checkpointer() as checkpointer:
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


def load_backbone(directory: str | os.PathLike, towers_settings: Mapping[str, Mapping[str, Any]],
                  *, shardings=None, specs: Mapping[str, towers.TowerSpec] | None = None
                  ) -> dict[str, nnx.Module]:
  """The converted towers as NNX modules, built with the experiment's run-time settings.

  Args:
    directory: made by `python -m vdit_jax.convert backbone`.
    towers_settings: tower name -> run-time settings (`config.model.towers`): `dtype`,
      `param_dtype` (parameters are cast to it on load) and the options the tower takes
      (`remat`; the UNet's `skip_temporal_if_single_frame`, `temporal_dropout`). Only the
      towers named here are loaded.
    shardings: where the parameters go. None: the first device. A jax.sharding.Sharding:
      every parameter gets it. A Mesh: each parameter is sharded by its nnx partition
      annotation (replicated where it has none). A callable `(path, ShapeDtypeStruct) ->
      Sharding`, path = (tower name, *attribute path): per parameter, e.g. the training
      rules' `vdit_jax.sharding.Rules.within("towers")`.
    specs: tower name -> TowerSpec; `towers.tower_specs()` by default.

  Raises:
    ConvertedBackboneError: naming the directory and the command that creates it.
    towers.TowerSettingsError: a setting a tower does not take.
  """
  directory = os.fspath(directory)
  manifest = backbone_format.read_manifest(directory)
  specs = towers.tower_specs() if specs is None else specs
  absent = [n for n in towers_settings if n not in manifest["towers"] or n not in specs]
  if absent:
    raise ConvertedBackboneError(directory, f"no converted tower {', '.join(absent)} (it has "
                                 f"{', '.join(manifest['towers'])})")
  for name, settings in towers_settings.items():
    towers.build_kwargs(name, specs[name], settings)  # Bad settings fail before any loading.
  return {name: load_tower(directory, name, specs[name], settings, shardings)
          for name, settings in towers_settings.items()}

