"""A run's Orbax checkpoints, starting from another run, and the exported parameters.

WORKDIR/checkpoints/<step>/ (an `ocp.CheckpointManager`, saves asynchronous) holds
  params  the trainable parameters: a nested dict keyed by attribute path, list indices as
          strings (`head/class_embed/0/kernel`), the layout of the converted backbone
  opt     the optimizer state
  train   step, the seed key and the non-finite counters (vdit_jax.train_state)
  data    each process's data iterator state (grain's checkpoint handler,
          process_<i>-of-<n>.json)
  meta    JSON: the step and the backbone reference
so a resumed run continues with the same parameters, optimizer state, random numbers and
next batch. The frozen backbone is not saved: `backbone_reference` names it (the converted
directory and the sha256 of its manifest, or the random towers' architectures and seed), and
a run or `init_from` with another backbone is refused. Parameters converted from VD-IT's
release (`python -m vdit_jax.convert vdit`) carry `released_reference()` instead: they fit any
converted backbone whose towers have the released architectures.

WORKDIR/export/ (`export`, or `convert vdit`'s output) holds the trainable parameters alone
(params/, the same nested layout, float32 or bfloat16), config.json and manifest.json (step,
dtype, backbone).
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Callable, Iterable, Iterator, Mapping

from absl import logging
import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from vdit_jax import atomic_dir, backbone_format, errors, pretrained, towers

EXPORT_DTYPES = ("float32", "bfloat16")


class CheckpointError(errors.UserError):
  """A checkpoint that is missing, or does not fit the model or backbone of this run."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def export_dir(workdir: str) -> str:
  return os.path.join(workdir, "export")


def backbone_reference(model_config, seed: int) -> dict[str, Any]:
  """What identifies the frozen towers of `config.model`: the converted directory and the
  sha256 of its manifest, or (weights_dir "") the random towers' architectures and `seed`,
  which the model must build them from."""
  if not model_config.weights_dir:
    return {"random_towers": model_config.random_towers.to_dict(), "seed": seed}
  path = backbone_format.manifest_path(model_config.weights_dir)
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  return {"weights_dir": os.path.abspath(model_config.weights_dir), "manifest_sha256": digest}


def released_reference() -> dict[str, Any]:
  """The backbone reference of parameters trained on the released towers
  (`towers.RELEASED_SOURCES`), as VD-IT's released checkpoint was."""
  return {"released_towers": dict(towers.RELEASED_SOURCES)}


def _released_mismatches(current: Mapping[str, Any]) -> list[str]:
  """Why the backbone `current` references is not a conversion of the released towers: its
  towers' stored architectures against `towers.released_architectures()`, field by field."""
  if "weights_dir" not in current:
    return ["this run builds random towers (config.model.random_towers), not converted ones"]
  lines = []
  for name, architecture in towers.released_architectures().items():
    here = backbone_format.read_tower_config(current["weights_dir"], name)
    released = json.loads(json.dumps(architecture.to_dict()))
    lines += [f"{name} {key}: {here.get(key)!r} here, {released.get(key)!r} released"
              for key in sorted(set(here) | set(released)) if here.get(key) != released.get(key)]
  return lines


def _same_backbone(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
  """Converted backbones are the same by manifest digest wherever they are stored."""
  if "manifest_sha256" in a and "manifest_sha256" in b:
    return a["manifest_sha256"] == b["manifest_sha256"]
  return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def check_backbone(stored: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
  """Raises CheckpointError naming both backbones unless they are the same, or `stored` is
  `released_reference()` and `current` a converted backbone of the released architectures."""
  if "released_towers" in stored and "released_towers" not in current:
    problems = _released_mismatches(current)
    if problems:
      raise CheckpointError(
          f"{where} was trained on the released towers "
          f"({', '.join(sorted(set(stored['released_towers'].values())))}); this run's "
          f"backbone ({json.dumps(current, sort_keys=True)}) is not a conversion of them:\n  "
          + "\n  ".join(problems[:20]) + "\nConvert the released towers with\n  "
          + backbone_format.CONVERT_COMMAND.format(out="DIR")
          + "\nand set config.model.weights_dir=DIR.")
    return
  if not _same_backbone(stored, current):
    raise CheckpointError(
        f"{where} was trained on another frozen backbone:\n  checkpoint: "
        f"{json.dumps(stored, sort_keys=True)}\n  this run:   "
        f"{json.dumps(current, sort_keys=True)}\nUse the backbone it was trained with, or "
        "another workdir.")


def nested(params: nnx.State) -> dict:
  """The `params` item of a State: {'head': {'0': {'kernel': x}}}."""
  return pretrained.nest({tuple(path): var.get_value()
                          for path, var in nnx.to_flat_state(params)})


def _lookup(tree: Mapping, path) -> Any:
  for part in path:
    tree = tree[str(part)]
  return tree


def from_nested(tree: Mapping, like: nnx.State) -> nnx.State:
  """The State shaped like `like` holding the values of a `nested` tree."""
  return nnx.from_flat_state([(path, var.replace(_lookup(tree, path)))
                              for path, var in nnx.to_flat_state(like)])


def _handlers() -> dict[str, Any]:
  return dict(params=ocp.PyTreeCheckpointHandler(), opt=ocp.StandardCheckpointHandler(),
              train=ocp.StandardCheckpointHandler(), data=grain.checkpoint.CheckpointHandler(),
              meta=ocp.JsonCheckpointHandler())


def reader(directory: str) -> ocp.CheckpointManager:
  """A read-only manager of another run's checkpoints directory (metadata works at once)."""
  return ocp.CheckpointManager(os.path.abspath(directory), item_handlers=_handlers(),
                               options=ocp.CheckpointManagerOptions(read_only=True))


def _restore_args(tree, partial_restore: bool = False) -> ocp.args.PyTreeRestore:
  """Restores the `nested` tree of ShapeDtypeStructs `tree` into its shardings."""
  return ocp.args.PyTreeRestore(
      tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree),
      partial_restore=partial_restore)


class Manager:
  """The checkpoints of one run (module docstring).

  Args:
    workdir: the run's directory; checkpoints go to WORKDIR/checkpoints.
    every_steps: save every this many steps (config.checkpoint_every_steps).
    keep: how many to keep (config.keep_checkpoints).
    backbone: `backbone_reference` of this run.
  """

  def __init__(self, workdir: str, *, every_steps: int, keep: int, backbone: Mapping[str, Any]):
    self.directory = checkpoint_dir(workdir)
    self._backbone = dict(backbone)
    self._manager = ocp.CheckpointManager(
        os.path.abspath(self.directory), item_handlers=_handlers(),
        options=ocp.CheckpointManagerOptions(save_interval_steps=every_steps, max_to_keep=keep,
                                             enable_async_checkpointing=True, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Mapping[str, Any], data: grain.DatasetIterator, *,
           force: bool = False) -> bool:
    """Starts saving `state` (at `step`) if the interval says so, or `force`; returns whether
    it did. Array writes finish in the background; the iterator state is taken now."""
    train = {k: v for k, v in state.items() if k not in ("params", "opt")}
    return self._manager.save(step, force=force, args=ocp.args.Composite(
        params=ocp.args.PyTreeSave(nested(state["params"])),
        opt=ocp.args.StandardSave(state["opt"]),
        train=ocp.args.StandardSave(train),
        data=grain.checkpoint.CheckpointSave(data),
        meta=ocp.args.JsonSave({"step": step, "backbone": self._backbone})))

  def restore(self, step: int, target: Mapping[str, Any], data: grain.DatasetIterator
              ) -> dict[str, Any]:
    """The train state saved at `step`, placed as `target` (train_state.abstract) says, and
    `data` set to continue after the batches that state has seen.

    Raises:
      CheckpointError: the checkpoint's backbone is not this run's.
    """
    where = os.path.join(self.directory, str(step))
    meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    check_backbone(meta.meta["backbone"], self._backbone, where)
    train_target = {k: v for k, v in target.items() if k not in ("params", "opt")}
    restored = self._manager.restore(step, args=ocp.args.Composite(
        params=_restore_args(nested(target["params"])),
        opt=ocp.args.StandardRestore(target["opt"]),
        train=ocp.args.StandardRestore(train_target),
        data=grain.checkpoint.CheckpointRestore(data)))
    return dict(restored.train, params=from_nested(restored.params, target["params"]),
                opt=restored.opt)

  def reached_preemption(self, step: int) -> bool:
    """Whether every process has agreed to stop at `step` after a preemption notice (JAX's
    preemption sync point; always False without jax.distributed)."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until the last save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _resolve(path: str) -> tuple[str, int]:
  """(checkpoints directory, step) of a run's checkpoint path: a workdir, its checkpoints/
  directory (the latest step), checkpoints/LATEST or checkpoints/<step>."""
  path = os.path.abspath(path)
  head, tail = os.path.split(path)
  step = None
  if tail == "LATEST" or tail.isdigit():
    path, step = head, (None if tail == "LATEST" else int(tail))
  elif os.path.isdir(checkpoint_dir(path)):
    path = checkpoint_dir(path)
  steps = ocp.utils.checkpoint_steps(path) if os.path.isdir(path) else []
  if not steps or (step is not None and step not in steps):
    raise CheckpointError(f"{os.path.join(path, str(step or ''))}: no checkpoint found "
                          f"(steps there: {sorted(steps)})")
  return path, max(steps) if step is None else step


def is_export(path: str) -> bool:
  """Whether `path` is an export directory (WORKDIR/export, or `convert vdit`'s output)."""
  return (os.path.isfile(os.path.join(path, "manifest.json"))
          and os.path.isdir(os.path.join(path, "params")))


@dataclasses.dataclass(frozen=True)
class _Stored:
  """Trained parameters on disk.

  where: their location, for messages. step: the train step. backbone: its reference.
  shapes: path -> shape of every stored parameter.
  restore: restore(target tree, partial) -> the `nested` tree of the target's leaves.
  """
  where: str
  step: int
  backbone: Mapping[str, Any]
  shapes: Mapping[tuple[str, ...], tuple[int, ...]]
  restore: Callable[[Any, bool], Any]


@contextlib.contextmanager
def _open_trained(path: str) -> Iterator[_Stored]:
  """The parameters of an export directory (`is_export`), or of a run's checkpoint
  (`_resolve`)."""
  if is_export(path):
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
      manifest = json.load(f)
    params_dir = os.path.join(path, "params")
    with pretrained.params_checkpointer() as checkpointer:
      shapes = pretrained.stored_shapes(checkpointer.metadata(params_dir).item_metadata.tree)
      yield _Stored(path, manifest["step"], manifest["backbone"], shapes, lambda tree, partial:
                    checkpointer.restore(params_dir, args=_restore_args(tree, partial)))
    return
  directory, step = _resolve(path)
  manager = reader(directory)
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    shapes = pretrained.stored_shapes(manager.item_metadata(step)["params"])
    yield _Stored(os.path.join(directory, str(step)), step, meta["backbone"], shapes,
                  lambda tree, partial: manager.restore(step, args=ocp.args.Composite(
                      params=_restore_args(tree, partial))).params)
  finally:
    manager.close()


def _load(path: str, params: nnx.State, *, skip: Iterable[str], backbone: Mapping[str, Any],
          unfit_hint: str) -> tuple[nnx.State, int, int]:
  """(`params` with the stored values of those no `skip` regex matches, the stored step, how
  many were loaded); see `load_trainable`."""
  values = {tuple(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(params)}
  skips = [re.compile(s) for s in skip]
  for regex in skips:
    if not any(regex.search("/".join(key)) for key in values):
      raise errors.ConfigError(f"config.init_skip {regex.pattern!r} matches no parameter")
  kept = {key: x for key, x in values.items() if not any(r.search("/".join(key)) for r in skips)}
  with _open_trained(path) as stored:
    check_backbone(stored.backbone, backbone, stored.where)
    problems = pretrained.shape_mismatches(
        {key: shape for key, shape in stored.shapes.items() if key in kept or key not in values},
        {key: x.shape for key, x in kept.items()})
    if problems:
      raise CheckpointError(f"{stored.where}: its trainable parameters do not fit this model "
                            f"({unfit_hint}):\n  " + "\n  ".join(problems[:20]))
    target = pretrained.nest({key: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                              for key, x in kept.items()})
    restored = stored.restore(target, len(kept) < len(values))
  state = nnx.from_flat_state([
      (path, var.replace(_lookup(restored, path)) if tuple(map(str, path)) in kept else var)
      for path, var in nnx.to_flat_state(params)])
  return state, stored.step, len(kept)


def load_trainable(path: str, params: nnx.State, *, skip: Iterable[str],
                   backbone: Mapping[str, Any]) -> nnx.State:
  """`params` with the trainable parameters of another run (config.init_from); those whose
  path matches a `skip` regex (config.init_skip) keep their value here.

  Args:
    path: an export directory (`is_export`: another run's WORKDIR/export, or VD-IT's release
      converted by `python -m vdit_jax.convert vdit`), or a run's checkpoint as `_resolve`
      takes it.
    params: this run's freshly initialised trainable parameters.
    skip: regexes searched in "/"-joined parameter paths.
    backbone: this run's `backbone_reference`.

  Raises:
    CheckpointError: no checkpoint, another backbone, or parameters that do not match
      (missing, unexpected or of another shape; listed).
    errors.ConfigError: a skip regex that matches no parameter.
  """
  state, _, loaded = _load(path, params, skip=skip, backbone=backbone,
                           unfit_hint="config.init_skip leaves parameters out")
  logging.info("initialised %d trainable parameters from %s, %d kept fresh", loaded, path,
               len(nnx.to_flat_state(params)) - loaded)
  return state


def load_trained(path: str, params: nnx.State, *, backbone: Mapping[str, Any]
                 ) -> tuple[nnx.State, int]:
  """Trained parameters for evaluation and prediction: (`params` filled, the step).

  Args:
    path: as `load_trainable` takes it.
    params: the model's trainable parameters (their shapes, dtypes and shardings are the
      targets; stored values are cast to their dtypes).
    backbone: the model's `backbone_reference`.

  Raises:
    CheckpointError: nothing there, another backbone, or parameters that do not match.
  """
  state, step, _ = _load(os.path.abspath(path), params, skip=(), backbone=backbone,
                          unfit_hint="config.model")
  return state, step


def export(workdir: str, config) -> str:
  """Writes WORKDIR/export/ from the run's latest checkpoint; returns its path.

  The trainable parameters in `config.export_dtype`, the config and the backbone reference
  (module docstring); an existing export is replaced once the new one is complete.

  Raises:
    CheckpointError: the workdir has no checkpoint.
    errors.ConfigError: an export dtype other than EXPORT_DTYPES.
  """
  if config.export_dtype not in EXPORT_DTYPES:
    raise errors.ConfigError(f"config.export_dtype {config.export_dtype!r} is not one of "
                             f"{EXPORT_DTYPES}")
  directory, step = _resolve(checkpoint_dir(workdir))
  manager = reader(directory)
  stored = manager.item_metadata(step)["params"]
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.PyTreeRestore(restore_args=as_numpy), meta=ocp.args.JsonRestore()))
  manager.close()
  dtype = jnp.dtype(config.export_dtype)
  params = jax.tree.map(lambda x: jnp.asarray(x, dtype), restored.params)
  out = export_dir(workdir)
  with atomic_dir.atomic_directory(out, overwrite=True) as tmp:
    with pretrained.params_checkpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, "params"), args=ocp.args.PyTreeSave(params))
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
      json.dump({"step": step, "dtype": config.export_dtype,
                 "checkpoint": os.path.join(directory, str(step)),
                 "backbone": restored.meta["backbone"]}, f, indent=2)
  logging.info("exported step %d of %s to %s (%s)", step, directory, out, config.export_dtype)
  return out
