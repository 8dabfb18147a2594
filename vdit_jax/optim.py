"""The optimizer and learning-rate schedule of `config.optimizer` and `config.schedule`.

The original (VD-IT main.py:76-105, 155-156) clips the global gradient norm, runs
torch.optim.AdamW over every trainable parameter and drops the learning rate with
MultiStepLR once per epoch. Here an epoch is `steps_per_epoch` updates, and the learning
rate is a function of the update step that the train step applies itself (`direction` below
is AdamW's update before the learning rate), so a skipped non-finite step moves the schedule
on like any other step.
"""

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from vdit_jax import errors


@dataclasses.dataclass(frozen=True)
class AdamW:
  """`config.optimizer`: torch.optim.AdamW after torch.nn.utils.clip_grad_norm_."""
  lr: float
  weight_decay: float
  b1: float
  b2: float
  eps: float
  grad_clip_norm: float

  def direction(self) -> optax.GradientTransformation:
    """Clipping, Adam and decoupled weight decay: AdamW's update divided by the learning
    rate, which `Schedule` gives per step (`params - lr * direction`)."""
    return optax.chain(optax.clip_by_global_norm(self.grad_clip_norm),
                       optax.scale_by_adam(b1=self.b1, b2=self.b2, eps=self.eps),
                       optax.add_decayed_weights(self.weight_decay))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """MultiStepLR in update steps: `lr x drop_factor^k` after k of the `lr_drops` epochs.

  Args:
    lr: the initial learning rate (config.optimizer.lr).
    epochs, lr_drops, drop_factor, max_steps: config.schedule.
    steps_per_epoch: the dataset's samples // the global batch size.
  """
  lr: float
  epochs: int
  lr_drops: Sequence[int]
  drop_factor: float
  max_steps: int
  steps_per_epoch: int

  def __post_init__(self):
    if self.steps_per_epoch < 1:
      raise errors.ConfigError(f"an epoch of {self.steps_per_epoch} steps: the dataset has "
                               "fewer samples than config.data.batch_size")
    if self.max_steps < 0:
      raise errors.ConfigError(f"config.schedule.max_steps={self.max_steps} must be >= 0")

  @property
  def total_steps(self) -> int:
    """config.schedule.max_steps if set, else `epochs` epochs."""
    return self.max_steps or self.epochs * self.steps_per_epoch

  def __call__(self, step: jax.Array) -> jax.Array:
    """The learning rate of update `step` (0-based), float32."""
    drops = sum((step >= epoch * self.steps_per_epoch).astype(jnp.int32)
                for epoch in self.lr_drops)
    return jnp.float32(self.lr) * jnp.float32(self.drop_factor) ** drops


def make(config, steps_per_epoch: int) -> tuple[AdamW, Schedule]:
  """The optimizer and schedule of an experiment config (`optimizer`, `schedule`)."""
  adamw = AdamW(**config.optimizer)
  return adamw, Schedule(lr=adamw.lr, steps_per_epoch=steps_per_epoch, **config.schedule)
