"""What `python -m vdit_jax.main --mode=train|eval|export` runs: VD-IT bound to the training
loop (vdit_jax/train.py), the evaluators (vdit_jax/evaluation/runner.py) and the checkpoints.

Each function takes the experiment config and the workdir, builds the model from
`config.model` (vdit_jax/models/vdit.py) on the mesh of `config.mesh` with the sharding rules
of `config.sharding`, and tokenises captions with the backbone's tokenizers (byte-level ones
for random towers).
"""

import functools
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from data_pipelines import pipeline
from vdit_jax import checkpoints, sharding, tokenizers, train, train_state
from vdit_jax.evaluation import in_training, prediction, runner
from vdit_jax.models import vdit


def caption_tokenizer(config) -> tokenizers.CaptionTokenizer:
  return tokenizers.CaptionTokenizer.for_model(config.model.weights_dir, **config.data.text)


def run_train(config, workdir: str) -> train.Outcome:
  """Trains to the end of the schedule (or a stop signal), resuming from the workdir, with
  the in-training evaluators of config.evals."""
  tokenize = caption_tokenizer(config)
  evaluators = in_training.make_evaluators(config, workdir, tokenize)

  def evaluate(step, rules, parts):
    figures, images = {}, {}
    for evaluator in (e for e in evaluators if e.due(step)):
      more_figures, more_images = evaluator.run(
          predict_function(evaluator.config, rules, parts), step)
      figures.update(more_figures)
      images.update(more_images)
    return figures, images

  return train.train(
      config, workdir,
      make_model=lambda rules: vdit.build(config, rules=rules),
      loss_fn=lambda model, batch, rng: model.loss(batch, rng, **config.loss),
      make_data=functools.partial(pipeline.make_train_iter, config, tokenize=tokenize),
      steps_per_epoch=pipeline.steps_per_epoch(config),
      backbone=checkpoints.backbone_reference(config.model, config.seed), evaluate=evaluate)


def _model_for_inference(config, path: str):
  """The model with trained parameters from `path` (an export or a checkpoint), sharded
  by the config's rules: (rules, Parts, step)."""
  rules = sharding.Rules(sharding.make_mesh(config.mesh), **config.sharding)
  model = vdit.build(config, rules=rules)
  model.eval()
  parts = train_state.split(model)
  backbone = checkpoints.backbone_reference(config.model, config.seed)
  parts.params, step = checkpoints.load_trained(path, parts.params, backbone=backbone)
  return rules, parts, step


def predict_function(config, rules: sharding.Rules, parts: train_state.Parts):
  """The evaluators' predict_fn (vdit_jax/evaluation/prediction.py) for trained `parts`, in
  eval mode whatever mode they were split in (dropout off).

  Latents are the VAE posterior's samples, as the original's inference draws them, each
  window's from config.seed and the window's identity (prediction.window_seeds), so that
  the results do not depend on batching or the process count; or the posterior mean with
  config.eval.deterministic_latents. Fields read: seed, eval.
  """
  def predict(params, frozen, rest, batch, window_seeds):
    model = nnx.merge(parts.graphdef, params, frozen, rest)
    model.eval()
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(config.seed), window_seeds)
    return model.predict(batch, queries=config.eval.queries, rng=keys,
                         deterministic_latents=config.eval.deterministic_latents)

  jitted = jax.jit(predict, out_shardings=rules.batch)

  def predict_fn(batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    arrays = rules.shard_batch(dict(batch, window_seeds=prediction.window_seeds(batch)))
    seeds = arrays.pop("window_seeds")
    out = jitted(parts.params, parts.frozen, parts.rest, arrays, seeds)
    return {k: np.asarray(multihost_utils.global_array_to_host_local_array(
        v, rules.mesh, rules.batch.spec)) for k, v in out.items()}

  return predict_fn


def run_eval(config, workdir: str) -> runner.EvalResult:
  """Evaluates config.eval.checkpoint (or the workdir's latest checkpoint) on the config's
  benchmark; writes <workdir>/eval/<dataset>/."""
  rules, parts, step = _model_for_inference(config, config.eval.checkpoint or workdir)
  logging.info("evaluating step %d on %s %s", step, config.data.dataset, config.eval.split)
  return runner.evaluate(config, workdir, predict_function(config, rules, parts),
                         tokenize=caption_tokenizer(config), step=step)


def run_export(config, workdir: str) -> str:
  """Writes <workdir>/export/ from the latest checkpoint; returns its path."""
  return checkpoints.export(workdir, config)
