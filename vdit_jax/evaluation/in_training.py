"""Evaluators the train loop runs every so many steps, big_vision style.

`config.evals` names them (configs/common.py `evaluator`): each entry carries the evaluated
dataset's own data and eval fields, `every_steps`, `num_videos` (the first videos of the
split, spread over the processes; 0: all) and `num_images` (mask overlays returned).

  evaluators = in_training.make_evaluators(config, workdir, tokenize)
  ...
  for evaluator in evaluators:
    if evaluator.due(step):
      figures, images = evaluator.run(predict_fn, step)

`predict_fn` follows vdit_jax/evaluation/prediction.py with `evaluator.queries`, using the
current parameters; every process calls `run`. Figures come back as "<name>/<figure>" (for
metrics.jsonl and TensorBoard), images as "<name>/overlay_<k>" (h, w, 3) uint8 arrays
(process 0; the others get none). Each run writes to <workdir>/eval/<name>/, replacing the
previous one (its results.json records the step).
"""

import dataclasses
import os

import ml_collections
import numpy as np

from data_pipelines import decoding
from vdit_jax.evaluation import prediction
from vdit_jax.evaluation import runner


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """One entry of config.evals, ready to run."""
  name: str
  config: ml_collections.ConfigDict
  workdir: str
  every_steps: int
  num_videos: int
  num_images: int
  tokenize: decoding.Tokenize | None

  @property
  def queries(self) -> str:
    """What predict_fn returns for this evaluator ("best" or "all")."""
    return self.config.eval.queries

  def due(self, step: int) -> bool:
    return self.every_steps > 0 and step > 0 and step % self.every_steps == 0

  def run(self, predict_fn: prediction.PredictFn,
          step: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Evaluates predict_fn; returns ({"<name>/<figure>": value}, {"<name>/<image>": array})."""
    result = runner.evaluate(self.config, self.workdir, predict_fn, tokenize=self.tokenize,
                             step=step, out_dir=os.path.join(self.workdir, "eval", self.name),
                             max_videos=self.num_videos,
                             num_images=self.num_images, progress=False)
    return ({f"{self.name}/{k}": v for k, v in result.figures.items()},
            {f"{self.name}/{k}": v for k, v in result.images.items()})


def make_evaluators(config: ml_collections.ConfigDict, workdir: str,
                    tokenize: decoding.Tokenize | None = None) -> list[Evaluator]:
  """The evaluators of config.evals (of trained configs) that ever run (every_steps > 0);
  their benchmarks' inputs (e.g. the DAVIS folder) are checked now, not at the first
  evaluation."""
  evaluators = []
  for name, entry in sorted(config.evals.items()):
    if entry.every_steps <= 0:
      continue
    sub = ml_collections.ConfigDict(dict(seed=config.seed, data=entry.data, eval=entry.eval))
    runner.make_benchmark(sub, os.path.join(workdir, "eval", name))
    evaluators.append(Evaluator(name=name, config=sub, workdir=workdir,
                                every_steps=entry.every_steps, num_videos=entry.num_videos,
                                num_images=entry.num_images, tokenize=tokenize))
  return evaluators
