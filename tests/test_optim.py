"""The optimizer and schedule against PyTorch's: clip_grad_norm_ + AdamW, and MultiStepLR
stepped once per epoch as VD-IT's main.py steps it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import ytvos
from vdit_jax import errors, optim


def _torch_lrs(lr, drops, factor, epochs, steps_per_epoch):
  """The learning rate of every update of a run that steps MultiStepLR after each epoch."""
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([param], lr=lr)
  sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(drops), gamma=factor)
  lrs = []
  for _ in range(epochs):
    lrs += [opt.param_groups[0]["lr"]] * steps_per_epoch
    opt.step()  # No gradient: nothing moves; torch wants it before the scheduler's step.
    sched.step()
  return lrs


def test_schedule_is_multisteplr_per_epoch():
  config = ytvos.get_config()
  adamw, schedule = optim.make(config, steps_per_epoch=7)
  assert schedule.total_steps == config.schedule.epochs * 7
  expected = _torch_lrs(adamw.lr, config.schedule.lr_drops, config.schedule.drop_factor,
                        config.schedule.epochs, 7)
  got = [float(schedule(jnp.int32(step))) for step in range(schedule.total_steps)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_max_steps_stops_early_and_keeps_the_drops():
  config = ytvos.get_config()
  config.schedule.max_steps = 50
  _, schedule = optim.make(config, steps_per_epoch=7)
  assert schedule.total_steps == 50
  assert float(schedule(jnp.int32(41))) == pytest.approx(config.optimizer.lr)  # epoch 5
  assert float(schedule(jnp.int32(42))) == pytest.approx(config.optimizer.lr * 0.1)  # epoch 6


def test_bad_schedule_inputs_name_the_field():
  config = ytvos.get_config()
  with pytest.raises(errors.ConfigError, match="fewer samples than config.data.batch_size"):
    optim.make(config, steps_per_epoch=0)
  config.schedule.max_steps = -1
  with pytest.raises(errors.ConfigError, match="config.schedule.max_steps"):
    optim.make(config, steps_per_epoch=3)


def test_adamw_with_clipping_matches_torch():
  """Five updates with gradients large enough to clip, lr dropping after the third."""
  config = ytvos.get_config()
  config.optimizer.update(lr=1e-2, weight_decay=0.05)
  adamw = optim.AdamW(**config.optimizer)
  schedule = optim.Schedule(lr=adamw.lr, epochs=5, lr_drops=(3,), drop_factor=0.1,
                            max_steps=0, steps_per_epoch=1)
  rng = np.random.default_rng(0)
  init = {"w": rng.normal(size=(3, 4)).astype(np.float32),
          "b": rng.normal(size=(4,)).astype(np.float32)}
  grads = [{k: (3 * rng.normal(size=v.shape)).astype(np.float32) for k, v in init.items()}
           for _ in range(5)]

  torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
  opt = torch.optim.AdamW(list(torch_params.values()), lr=adamw.lr, betas=(adamw.b1, adamw.b2),
                          eps=adamw.eps, weight_decay=adamw.weight_decay)
  sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3], gamma=0.1)
  for g in grads:
    for k, p in torch_params.items():
      p.grad = torch.tensor(g[k])
    torch.nn.utils.clip_grad_norm_(list(torch_params.values()), adamw.grad_clip_norm)
    opt.step()
    sched.step()

  tx = adamw.direction()
  params = jax.tree.map(jnp.asarray, init)
  state = tx.init(params)
  for step, g in enumerate(grads):
    direction, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
    lr = schedule(jnp.int32(step))
    params = optax.apply_updates(params, jax.tree.map(lambda d: -lr * d, direction))
  for k, p in torch_params.items():
    np.testing.assert_allclose(np.asarray(params[k]), p.detach().numpy(), rtol=1e-5, atol=1e-6)
