"""A toy model, loss and data with the contract `vdit_jax.train.train` asks of VD-IT, and a
command that trains it (the tests' subprocesses: restarts, SIGTERM, two processes).

The model has frozen `towers` (a conv and a dense layer with dropout, like the UNet's
temporal dropout) and trainable layers after them; the loss normalises by the batch's valid
examples, as VD-IT's by its valid frames. The data is a grain pipeline whose global batch at
each step does not depend on the process count: process p of n gets rows
[p B/n, (p+1) B/n) of it.

  python tests/toy_model.py --workdir DIR --max_steps N [--devices 8] [--mesh data:2,fsdp:4]
      [--record FILE] [--coordinator HOST:PORT --num_processes 2 --process_id I]
"""

import argparse
import hashlib
import os
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SIZE = 16  # Frames are (SIZE, SIZE, 3).
BACKBONE = {"toy_towers": "conv3x3-64, dense-256", "seed": 0}


class ToyTowers(nnx.Module):
  """The frozen part: (B, H, W, 3) -> (B, 256)."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, 64, (3, 3), rngs=rngs)
    self.proj = nnx.Linear(64, 256, rngs=rngs)
    self.dropout = nnx.Dropout(0.2, rngs=rngs)

  def __call__(self, frames):
    features = nnx.relu(self.conv(frames)).mean((1, 2))
    return self.dropout(self.proj(features))


class ToyModel(nnx.Module):
  """Frozen towers, then a trainable adapter and class_embed: (B, H, W, 3) -> (B, classes);
  the loss needs 4 classes."""

  def __init__(self, rngs: nnx.Rngs, classes: int = 4):
    self.towers = ToyTowers(rngs)
    self.adapter = nnx.Linear(256, 32, rngs=rngs)
    self.class_embed = nnx.Linear(32, classes, rngs=rngs)

  def __call__(self, frames):
    return self.class_embed(nnx.gelu(self.adapter(self.towers(frames))))


def make_model(rules, seed: int = 0, classes: int = 4):
  from vdit_jax import train_state
  return train_state.init_sharded(
      lambda: ToyModel(nnx.Rngs(seed, dropout=seed + 1), classes), rules)


def loss_fn(model, batch, rng):
  """Squared and absolute error of the valid rows, each summed and divided by the global
  count of valid rows; `rng` jitters the targets."""
  pred = model(batch["frames"])
  target = batch["target"] + 0.01 * jax.random.normal(rng, batch["target"].shape)
  valid = batch["valid"].astype(jnp.float32)
  count = jnp.maximum(valid.sum(), 1.0)
  l2 = (((pred - target) ** 2).sum(-1) * valid).sum() / count
  l1 = (jnp.abs(pred - target).sum(-1) * valid).sum() / count
  return l2 + 0.5 * l1, {"l2": l2, "l1": l1}


class _Example(grain.transforms.Map):
  """Sample index -> example, a function of the index alone."""

  def map(self, index):
    rng = np.random.default_rng(int(index))
    return {"frames": rng.normal(size=(SIZE, SIZE, 3)).astype(np.float32),
            "target": rng.normal(size=(4,)).astype(np.float32),
            "valid": np.bool_(rng.random() < 0.75), "index": np.int32(index),
            "caption": f"sample {index}"}


class _ProcessRows(grain.transforms.MapWithIndex):
  """A global batch -> this process's rows; NaN targets from batch `poison_from` on."""

  def __init__(self, process_index: int, process_count: int, poison_from: int | None):
    self._index, self._count, self._poison = process_index, process_count, poison_from

  def map_with_index(self, index, batch):
    rows = len(batch["index"]) // self._count
    part = {k: v[self._index * rows:(self._index + 1) * rows] for k, v in batch.items()}
    if self._poison is not None and index >= self._poison:
      part["target"] = np.full_like(part["target"], np.nan)
    return part


def digest(batch) -> str:
  return hashlib.sha256(b"".join(np.ascontiguousarray(batch[k]).tobytes()
                                 for k in ("frames", "target", "valid", "index"))).hexdigest()


class Recording(grain.DatasetIterator):
  """Appends the digest of every batch it yields to a file."""

  def __init__(self, parent: grain.DatasetIterator, path: str):
    super().__init__(parent)
    self._path = path

  def __next__(self):
    batch = next(self._parent)
    with open(self._path, "a", encoding="utf-8") as f:
      f.write(digest(batch) + "\n")
    return batch

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


def make_data(process_index: int, process_count: int, *, batch_size: int, seed: int,
              record: str | None = None, poison_from: int | None = None):
  ds = (grain.MapDataset.range(100_000).shuffle(seed=seed).map(_Example())
        .batch(batch_size, drop_remainder=True)
        .map_with_index(_ProcessRows(process_index, process_count, poison_from)))
  iterator = iter(ds.to_iter_dataset())
  return Recording(iterator, record) if record else iterator


def config(max_steps: int, mesh=(("data", 2), ("fsdp", 4))):
  """configs/ytvos.py:tiny for the toy: 8 examples a batch, an epoch of 4 steps."""
  from configs import ytvos
  c = ytvos.get_config("tiny")
  c.mesh = tuple(mesh)
  c.data.batch_size = 8
  c.schedule.update(epochs=2, lr_drops=(1,), max_steps=max_steps)
  c.optimizer.lr = 1e-2
  c.sharding.min_shard_bytes = 1024
  return c


STEPS_PER_EPOCH = 4


def run(workdir: str, c, *, record: str | None = None, poison_from: int | None = None):
  import functools
  from vdit_jax import train
  return train.train(
      c, workdir, make_model=functools.partial(make_model, seed=c.seed), loss_fn=loss_fn,
      make_data=functools.partial(make_data, batch_size=c.data.batch_size, seed=c.seed,
                                  record=record, poison_from=poison_from),
      steps_per_epoch=STEPS_PER_EPOCH, backbone=BACKBONE)


def main(argv) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--max_steps", type=int, required=True)
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--mesh", default="data:2,fsdp:4")
  parser.add_argument("--checkpoint_every_steps", type=int, default=2)
  parser.add_argument("--record")
  parser.add_argument("--coordinator")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  args = parser.parse_args(argv)
  jax.config.update("jax_num_cpu_devices", args.devices)
  if args.coordinator:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               initialization_timeout=60)
  mesh = [(name, int(size)) for name, size in (a.split(":") for a in args.mesh.split(","))]
  c = config(args.max_steps, mesh)
  c.checkpoint_every_steps = args.checkpoint_every_steps
  outcome = run(args.workdir, c, record=args.record)
  print(f"done: step {outcome.step} preempted {outcome.preempted}", flush=True)
  return 0


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  sys.exit(main(sys.argv[1:]))
