"""The training loop, top to bottom: mesh, model, train state, update step, loop.

`train(config, workdir, make_model=..., loss_fn=..., make_data=..., steps_per_epoch=...,
backbone=...)` runs on one CPU, one GPU, or every process of a TPU pod or GPU cluster (each
process calls it after `jax.distributed.initialize()`). What the model side provides:

  make_model(rules) -> nnx.Module
      The model with its frozen towers under the attribute `towers` (train_state.TRAINABLE
      is everything else), each parameter already in `rules`' sharding: towers through
      `pretrained.load_backbone(..., shardings=rules.within("towers"))`, random parts through
      `train_state.init_sharded(make, rules, prefix)`. Seeded from config.seed. The loop
      puts it in training mode (`model.train()`).
  loss_fn(model, batch, rng) -> (loss, {name: scalar})
      On the global batch (dict of arrays split over the batch axes; string entries are
      left on the host); `rng` and the model's reseeded `dropout` streams are the only
      randomness (vdit_jax.train_step). Non-Param variables are read-only.
  make_data(process_index, process_count) -> grain.DatasetIterator
      This process's part of each global batch, checkpointable (get_state / set_state):
      `functools.partial(data_pipelines.pipeline.make_train_iter, config, tokenize=...)`.
  steps_per_epoch: the dataset's samples // config.data.batch_size.
  backbone: `checkpoints.backbone_reference(config.model, seed)`.
  evaluate: optional, the in-training evaluators (`Evaluate`); their figures and images go
      to the logs of the step.

WORKDIR gets config.json (config, mesh, device and process counts), metrics.jsonl,
tensorboard/ and checkpoints/ (vdit_jax.checkpoints). A workdir with checkpoints resumes
from the latest; otherwise `config.init_from` may give the starting trainable parameters.
SIGTERM or SIGINT ends the run after the current step with a checkpoint (vdit_jax.preemption).
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable, Mapping

from absl import logging
import grain
import jax
from flax import nnx

from vdit_jax import checkpoints, errors, losses, metrics_writer, optim, preemption, sharding
from vdit_jax import train_state, train_step


# evaluate(step, rules, parts) -> (figures, images) on the model `parts` (its params the
# current trainable parameters); every process calls it after the step's checkpoint.
Evaluate = Callable[[int, sharding.Rules, train_state.Parts],
                    tuple[Mapping[str, float], Mapping[str, Any]]]


class NonFiniteError(errors.UserError):
  """Too many steps in a row with a NaN or infinite loss or gradient."""


class DataExhaustedError(errors.UserError):
  """The data iterator ended before the schedule did."""


@dataclasses.dataclass
class Outcome:
  """How a run ended: the last step done, whether a stop signal ended it, the train state."""
  step: int
  preempted: bool
  state: dict[str, Any]


def _write_config(workdir: str, config, mesh: jax.sharding.Mesh) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump({"config": json.loads(config.to_json_best_effort()), "mesh": dict(mesh.shape),
               "devices": jax.device_count(), "processes": jax.process_count(),
               "platform": jax.devices()[0].platform}, f, indent=2)


def _check_finite(step: int, metrics: Mapping[str, jax.Array], limit: int) -> None:
  in_row = int(jax.device_get(metrics["nonfinite_in_row"]))
  if in_row >= limit:
    raise NonFiniteError(
        f"training stopped at step {step}: the loss or gradient was NaN or infinite in "
        f"{in_row} steps in a row (steps {step - in_row + 1}-{step}; their updates were "
        "skipped), config.max_nonfinite_in_row allows fewer. Lower config.optimizer.lr, or "
        "look at the data of those steps.")


def _overview(parts: train_state.Parts) -> str:
  def describe(name, state):
    leaves = jax.tree.leaves(state)
    held = sharding.per_device_bytes(leaves).values()
    return (f"{name}: {sum(x.size for x in leaves):,} parameters, "
            f"{sum(x.nbytes for x in leaves) / 2**20:.1f} MiB, at most "
            f"{max(held, default=0) / 2**20:.1f} MiB per device")
  return describe("trainable", parts.params) + "; " + describe("frozen", parts.frozen)


def train(config, workdir: str, *, make_model: Callable[[sharding.Rules], nnx.Module],
          loss_fn: train_step.LossFn,
          make_data: Callable[[int, int], grain.DatasetIterator], steps_per_epoch: int,
          backbone: Mapping[str, Any], evaluate: Evaluate | None = None) -> Outcome:
  """Trains to the end of the schedule (or a stop signal) from the latest checkpoint.

  Args: see the module docstring.

  Raises:
    NonFiniteError: config.max_nonfinite_in_row non-finite steps in a row.
    DataExhaustedError: the data ran out before the schedule's last step.
    checkpoints.CheckpointError: the workdir's checkpoint or init_from does not fit.
    errors.ConfigError: a mesh, sharding or schedule setting that cannot work.
  """
  # Mesh and sharding.
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.Rules(mesh, **config.sharding)
  if config.data.batch_size % rules.batch_divisor:
    raise errors.ConfigError(
        f"config.data.batch_size {config.data.batch_size} does not split over the batch axes "
        f"{tuple(config.sharding.batch_axes)} ({rules.batch_divisor} ways on the mesh "
        f"{dict(mesh.shape)}): use a multiple of {rules.batch_divisor}, or change config.mesh "
        "or config.sharding.batch_axes")
  process, processes = jax.process_index(), jax.process_count()
  logging.info("process %d of %d: %d of %d devices, mesh %s", process, processes,
               jax.local_device_count(), jax.device_count(), dict(mesh.shape))
  if process == 0:
    _write_config(workdir, config, mesh)

  # Optimizer and schedule.
  adamw, schedule = optim.make(config, steps_per_epoch)
  tx = adamw.direction()
  total_steps = schedule.total_steps

  # Model, split into what trains and what stays frozen, each part in its sharding.
  model = make_model(rules)
  model.train()
  parts = train_state.split(model)
  del model
  parts.params = sharding.put(parts.params, rules.tree(parts.params))
  parts.frozen = sharding.put(parts.frozen, rules.tree(parts.frozen))
  parts.rest = sharding.put(parts.rest, rules.tree(parts.rest))
  logging.info("%s", _overview(parts))

  # Train state: resumed from this workdir, else from init_from or fresh.
  state_shardings = train_state.shardings(rules, tx, parts.params)
  data = make_data(process, processes)
  ckpt = checkpoints.Manager(workdir, every_steps=config.checkpoint_every_steps,
                             keep=config.keep_checkpoints, backbone=backbone)
  latest = ckpt.latest_step()
  if latest is not None:
    logging.info("resuming from %s/%d", ckpt.directory, latest)
    state = ckpt.restore(latest, train_state.abstract(state_shardings, parts.params, tx), data)
  else:
    params = parts.params
    if config.init_from:
      params = checkpoints.load_trainable(config.init_from, params, skip=config.init_skip,
                                          backbone=backbone)
    state = train_state.create(params, tx, config.seed, state_shardings)
  parts.params = None  # The train state holds them from here on (and donates them).
  first_step = int(jax.device_get(state["step"]))

  # The update step.
  step_fn = train_step.make(parts, state_shardings, rules, loss_fn=loss_fn, tx=tx,
                            schedule=schedule)

  # The loop. The host reads each step's non-finite count one step later, so at most two
  # steps are in flight.
  writer = metrics_writer.MetricsWriter(
      workdir, total_steps=total_steps, console_keys=("loss",) + losses.TERMS,
      active=process == 0)
  writer.note(f"training steps {first_step + 1}-{total_steps} ({steps_per_epoch} per epoch) "
              f"on {jax.device_count()} devices, mesh {dict(mesh.shape)}"
              if first_step < total_steps else
              f"nothing to train: the checkpoint is at step {first_step} of {total_steps}")
  preempted, step, pending = False, first_step, None
  tick, tick_step, data_wait = None, first_step, 0.0
  try:
    with preemption.StopRequest(enabled=processes == 1) as stop:
      for step in range(first_step + 1, total_steps + 1):
        start = time.perf_counter()
        try:
          batch = next(data)
        except StopIteration:
          raise DataExhaustedError(
              f"the data ended before step {step} of {total_steps}: config.data.num_epochs="
              f"{config.data.num_epochs} gives too few batches; leave it unset (None) to "
              "repeat the data") from None
        data_wait += time.perf_counter() - start
        state, metrics = step_fn(state, parts.frozen, parts.rest, rules.shard_batch(batch))
        if pending is not None:
          _check_finite(*pending, config.max_nonfinite_in_row)
        pending = (step, metrics)
        if tick is None:  # Rates leave out the first step, which compiles.
          jax.block_until_ready(metrics)
          tick, tick_step, data_wait = time.perf_counter(), step, 0.0
        if step % config.log_every_steps == 0 or step == total_steps:
          values = jax.device_get(metrics)
          now = time.perf_counter()
          if step > tick_step:
            rate = (step - tick_step) / (now - tick)
            values.update(steps_per_s=rate, clips_per_s=rate * config.data.batch_size,
                          data_wait_s=data_wait / (step - tick_step))
          writer.write(step, dict(values, epoch=step / steps_per_epoch))
          tick, tick_step, data_wait = now, step, 0.0
        preempted = stop.requested or ckpt.reached_preemption(step)
        ckpt.save(step, state, data, force=preempted or step == total_steps)
        if evaluate is not None and not preempted:
          figures, images = evaluate(step, rules, dataclasses.replace(parts,
                                                                      params=state["params"]))
          if figures:
            writer.write(step, figures)
            writer.write_images(step, images)
        if preempted:
          writer.note(f"stopped at step {step}; checkpoint {ckpt.directory}/{step}")
          break
      if pending is not None:
        _check_finite(*pending, config.max_nonfinite_in_row)
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
  return Outcome(step=step, preempted=preempted, state=state)
