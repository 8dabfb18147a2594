"""A toy model, loss and data with the contract `vdit_jax.train.train` asks of VD-IT, for
the training system's quick in-process tests (tests/vdit_tiny.py trains VD-IT itself).

The model has frozen `towers` (a conv and a dense layer with dropout, like the UNet's
temporal dropout) and trainable layers after them; the loss normalises by the batch's valid
examples, as VD-IT's by its valid frames. The data are global batches
(tests/global_batches.py) of random examples.
"""

import functools

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import global_batches

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


def _poison(part):
  return dict(part, target=np.full_like(part["target"], np.nan))


def make_data(process_index: int, process_count: int, *, batch_size: int, seed: int,
              record: str | None = None, poison_from: int | None = None):
  """Global batches of toy examples (tests/global_batches.py); NaN targets from batch
  `poison_from` on."""
  return global_batches.make_data(process_index, process_count, example=_Example(),
                                  batch_size=batch_size, seed=seed, record=record,
                                  poison_from=poison_from, poison=_poison)


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
  from vdit_jax import train
  return train.train(
      c, workdir, make_model=functools.partial(make_model, seed=c.seed), loss_fn=loss_fn,
      make_data=functools.partial(make_data, batch_size=c.data.batch_size, seed=c.seed,
                                  record=record, poison_from=poison_from),
      steps_per_epoch=STEPS_PER_EPOCH, backbone=BACKBONE)
