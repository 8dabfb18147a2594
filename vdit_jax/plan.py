r"""The memory planner: what a training step costs per device, from shapes alone.

  python -m vdit_jax.plan --config=configs/ytvos.py --mesh=data:1,fsdp:8 \
      [--frames=5 --height=384 --width=640] [--batch_size=N] \
      [--config.model.towers.unet.remat=True ...]

builds the model of the config with its released tower architectures (random towers for a
config that names them, such as `:tiny`) as shapes only (`nnx.eval_shape`, no weights),
lowers and compiles the real train step (vdit_jax/train_step.py) for fake CPU devices laid out
as the mesh, and prints per device: the frozen and trainable parameter bytes, the optimizer
state, XLA's memory analysis (arguments, outputs, temporaries, peak) and the step's FLOPs
from XLA's cost analysis. The figures are the CPU compiler's: an accelerator's compiler
schedules and fuses differently, so treat them as an estimate of its needs.
"""

import math

from absl import app, flags
import jax
import numpy as np
from ml_collections import config_flags

from vdit_jax import optim, sharding, towers, train_state, train_step
from vdit_jax.models import vdit

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_MESH = flags.DEFINE_string("mesh", "data:1,fsdp:8",
                            "Mesh axes and sizes, e.g. data:1,fsdp:8 (fake CPU devices).")
_FRAMES = flags.DEFINE_integer("frames", 5, "Frames per clip.")
_HEIGHT = flags.DEFINE_integer("height", 384, "Padded frame height.")
_WIDTH = flags.DEFINE_integer("width", 640, "Padded frame width.")
_BATCH = flags.DEFINE_integer("batch_size", 0,
                              "Global batch; 0: one clip per way the batch is split.")

_GIB = 2**30


def _parse_mesh(text: str) -> tuple[tuple[str, int], ...]:
  try:
    return tuple((name, int(size)) for name, size in (a.split(":") for a in text.split(",")))
  except ValueError:
    raise app.UsageError(f"--mesh {text!r}: expected name:size,name:size") from None


def _per_device(tree) -> int:
  """Bytes of the largest shard per device of a tree of ShapeDtypeStructs with shardings."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.sharding.shard_shape(x.shape)
    total += math.prod(shard) * x.dtype.itemsize
  return total


def _batch(config, size: int, rules):
  """ShapeDtypeStructs of a global training batch, in the batch sharding."""
  t, h, w = _FRAMES.value, _HEIGHT.value, _WIDTH.value
  text = config.data.text
  shapes = dict(frames=((t, h, w, 3), np.uint8), pad_mask=((h, w), bool),
                masks=((t, h, w), bool), boxes=((t, 4), np.float32), valid=((t,), bool),
                annotated=((t,), bool), size=((2,), np.int32),
                clip_ids=((text.clip_max_length,), np.int32),
                clip_mask=((text.clip_max_length,), np.int32),
                roberta_ids=((text.roberta_max_length,), np.int32),
                roberta_mask=((text.roberta_max_length,), np.int32))
  return {k: jax.ShapeDtypeStruct((size,) + s, d, sharding=rules.batch)
          for k, (s, d) in shapes.items()}


def _abstract_model(config) -> vdit.VDIT:
  """The config's model as shapes: its random towers' architectures, else the released."""
  if not config.model.random_towers:
    return vdit.abstract_released(config)
  specs = towers.tower_specs()
  return vdit.abstract_model(config, {n: towers.architecture(n, specs[n], fields)
                                      for n, fields in config.model.random_towers.items()})


def plan(config, mesh_axes) -> dict[str, float]:
  """Compiles the train step for `mesh_axes` from shapes; returns the figures."""
  mesh = sharding.make_mesh(mesh_axes)
  rules = sharding.Rules(mesh, **config.sharding)
  model = _abstract_model(config)
  model.train()
  parts = train_state.split(model)
  adamw, schedule = optim.make(config, steps_per_epoch=1000)
  tx = adamw.direction()
  state_shardings = train_state.shardings(rules, tx, parts.params)
  state = train_state.abstract(state_shardings, parts.params, tx)
  place = lambda tree: jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, rules.tree(tree))
  frozen, rest = place(parts.frozen), place(parts.rest)
  batch = _batch(config, _BATCH.value or rules.batch_divisor, rules)
  step = train_step.make(parts, state_shardings, rules,
                         loss_fn=lambda m, b, r: m.loss(b, r, **config.loss), tx=tx,
                         schedule=schedule)
  compiled = step.lower(state, frozen, rest, batch).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {
      "frozen parameters": _per_device(frozen),
      "trainable parameters": _per_device(state["params"]),
      "optimizer state": _per_device(state["opt"]),
      "arguments": memory.argument_size_in_bytes,
      "outputs": memory.output_size_in_bytes,
      "temporaries": memory.temp_size_in_bytes,
      "peak": memory.peak_memory_in_bytes,
      "flops": cost.get("flops", float("nan")),
      "batch": batch["frames"].shape[0],
      "devices": mesh.size,
  }


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  mesh_axes = _parse_mesh(_MESH.value)
  # Fake CPU devices in the mesh's number, whatever accelerator the machine has.
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", math.prod(s for _, s in mesh_axes))
  figures = plan(_CONFIG.value, mesh_axes)
  print(f"train step of {_CONFIG.value.data.dataset}: global batch {figures['batch']} clips of "
        f"{_FRAMES.value} frames at {_HEIGHT.value}x{_WIDTH.value}, mesh {_MESH.value} "
        f"({figures['devices']} devices)")
  print("backend: XLA CPU (fake devices); figures are that compiler's, per device")
  for name in ("frozen parameters", "trainable parameters", "optimizer state", "arguments",
               "outputs", "temporaries"):
    print(f"  {name:22s} {figures[name] / 2**20:10.1f} MiB")
  print(f"  {'FLOPs per step':22s} {figures['flops'] / 1e12:8.2f} TFLOP (per device program)")
  print(f"peak per device: {figures['peak'] / _GIB:.2f} GiB")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
