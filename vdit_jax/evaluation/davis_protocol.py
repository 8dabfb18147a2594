"""The DAVIS 2017 protocol: per-object statistics, matching predictions to objects, tables.

As the DAVIS toolkit (davisvideochallenge/davis2017-evaluation, copied as VD-IT `davis2017/`)
scores a sequence:
  ground truth: the id map's 255 pixels are void and become background; the objects are ids
    1..K with K the largest id of the FIRST frame (later, higher ids are not scored).
  prediction: objects are ids 1..N, N the largest id of any frame; missing ones are empty.
  unsupervised (Ref-DAVIS17's task): every frame is scored, void pixels are left out, and
    predicted objects are matched one-to-one to ground-truth objects by the Hungarian algorithm
    maximising the summed (mean_t J + mean_t F) / 2; unmatched predictions cost nothing;
    N <= 20.
  semi-supervised: the first and last frames are dropped, void counts as background, and id k
    is ground-truth object k; N <= K.
Each ground-truth object gets mean, recall and decay of J and F over its frames; the global
figures pool objects over sequences (no per-sequence averaging), J&F = (J-Mean + F-Mean) / 2.

Row names are "<sequence>_<ground-truth id>". (The toolkit numbers the rows of a sequence in
the order of the matched predicted ids instead, so its per-object rows can come permuted
within a sequence; the values and every global figure are the same.)
"""

import dataclasses
from typing import Sequence

import numpy as np
from scipy import optimize

from vdit_jax import errors
from vdit_jax.evaluation import metrics

TASKS = ("unsupervised", "semi-supervised")
VOID_ID = 255
MAX_PROPOSALS = 20  # VD-IT davis2017/evaluation.py:44
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")


@dataclasses.dataclass(frozen=True)
class Statistics:
  """Mean, recall (share of frames > 0.5) and decay (first quarter minus last) of a metric."""
  mean: float
  recall: float
  decay: float


def statistics(per_frame: np.ndarray) -> Statistics:
  """The toolkit's `db_statistics` (VD-IT davis2017/utils.py:135-161) of a (T,) vector.

  Decay splits the frames into 4 bins at round(linspace(1, T, 5)) - 1, halves rounded up,
  each bin including its right edge (adjacent bins share a frame).
  """
  per_frame = np.asarray(per_frame, np.float64)
  edges = (np.round(np.linspace(1, len(per_frame), 5) + 1e-10) - 1).astype(int)
  first = per_frame[edges[0]:edges[1] + 1]
  last = per_frame[edges[3]:edges[4] + 1]
  return Statistics(mean=float(np.mean(per_frame)), recall=float(np.mean(per_frame > 0.5)),
                    decay=float(np.mean(first) - np.mean(last)))


@dataclasses.dataclass(frozen=True)
class ObjectScores:
  """One ground-truth object's J and F statistics; name is "<sequence>_<id>"."""
  name: str
  j: Statistics
  f: Statistics


def score_sequence(sequence: str, gt_ids: np.ndarray, pred_ids: np.ndarray,
                   task: str = "unsupervised") -> list[ObjectScores]:
  """Scores one sequence's predicted id maps against its ground truth.

  Args:
    sequence: the sequence name, for row names and messages.
    gt_ids: (T, H, W) int ground-truth id maps, 255 = void.
    pred_ids: (T, H, W) int predicted id maps, 0 = background.
    task: "unsupervised" or "semi-supervised" (see the module docstring).

  Returns:
    One ObjectScores per ground-truth object, in id order.

  Raises:
    errors.UserError: more predicted ids than the task allows, or too few frames.
  """
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  void = gt_ids == VOID_ID
  gt_ids = np.where(void, 0, gt_ids)
  num_gt = int(gt_ids[0].max())
  num_pred = int(pred_ids.max())
  if task == "semi-supervised":
    if len(gt_ids) < 3:
      raise errors.UserError(f"sequence {sequence}: {len(gt_ids)} frames; semi-supervised "
                             "scoring drops the first and last and needs at least 3")
    if num_pred > num_gt:
      raise errors.UserError(
          f"sequence {sequence}: predicted ids go up to {num_pred} but the first ground-truth "
          f"frame has {num_gt} objects; semi-supervised ids must be the ground truth's")
    # VD-IT davis2017/evaluation.py:84-89: first and last frames dropped, void not used.
    gt_ids, pred_ids, void = gt_ids[1:-1], pred_ids[1:-1], None
  elif num_pred > MAX_PROPOSALS:
    raise errors.UserError(
        f"sequence {sequence}: predicted ids go up to {num_pred}; the unsupervised protocol "
        f"allows at most {MAX_PROPOSALS} objects (ids 1..{MAX_PROPOSALS})")
  num_pred = max(num_pred, num_gt)  # Missing predicted objects are empty masks.
  j = metrics.pairwise_region_similarity(pred_ids, gt_ids, num_pred, num_gt, void)
  f = metrics.pairwise_boundary_f_measure(pred_ids, gt_ids, num_pred, num_gt, void)
  if task == "semi-supervised":
    matched = np.arange(num_gt)
  else:
    matched = match_objects(j, f)
  return [ObjectScores(name=f"{sequence}_{k + 1}", j=statistics(j[p, k]), f=statistics(f[p, k]))
          for k, p in enumerate(matched)]


def match_objects(j: np.ndarray, f: np.ndarray) -> np.ndarray:
  """The predicted object matched to each ground-truth object (unsupervised protocol).

  Args:
    j, f: (P, G, T) per-frame J and F of every (predicted, ground-truth) pair, P >= G.

  Returns:
    (G,) int: for ground-truth object k, the index of its predicted object. The assignment
    maximises the summed (mean_t J + mean_t F) / 2 (scipy's linear_sum_assignment on its
    negation, VD-IT davis2017/evaluation.py:59-64).
  """
  score = (np.mean(j, axis=2) + np.mean(f, axis=2)) / 2
  pred, gt = optimize.linear_sum_assignment(-score)
  matched = np.empty(j.shape[1], int)
  matched[gt] = pred
  return matched


@dataclasses.dataclass(frozen=True)
class DavisTables:
  """The two tables of the DAVIS toolkit's CSVs.

  global_row: GLOBAL_COLUMNS -> value (fractions, not percentages).
  per_object: (name, J-Mean, F-Mean) rows, the per-sequence CSV's SEQUENCE_COLUMNS.
  """
  global_row: dict[str, float]
  per_object: tuple[tuple[str, float, float], ...]


def pooled_tables(objects: Sequence[ObjectScores]) -> DavisTables:
  """Global figures as means over all objects of all sequences (VD-IT eval_davis.py:47-50)."""
  if not objects:
    raise errors.UserError("no ground-truth objects to score: every sequence's first "
                           "ground-truth frame is empty")
  columns = {}
  for metric in ("j", "f"):
    for stat in ("mean", "recall", "decay"):
      columns[f"{metric.upper()}-{stat.capitalize()}"] = float(
          np.mean([getattr(getattr(o, metric), stat) for o in objects]))
  columns["J&F-Mean"] = (columns["J-Mean"] + columns["F-Mean"]) / 2
  return DavisTables(global_row={c: columns[c] for c in GLOBAL_COLUMNS},
                     per_object=tuple((o.name, o.j.mean, o.f.mean) for o in objects))


def average_tables(runs: Sequence[DavisTables]) -> DavisTables:
  """The mean of several runs' tables, e.g. Ref-DAVIS17's 4 annotator runs.

  Ref-DAVIS17 reports the arithmetic mean of the 4 runs' global figures (ReferFormer's author,
  wjn922/ReferFormer issue #30); per-object rows are averaged by name, so all runs must score
  the same objects.
  """
  if not runs:
    raise ValueError("no runs to average")
  names = [name for name, _, _ in runs[0].per_object]
  for run in runs[1:]:
    if [name for name, _, _ in run.per_object] != names:
      raise ValueError("the runs score different objects; only runs over one ground truth "
                       "can be averaged")
  per_object = tuple(
      (name, float(np.mean([run.per_object[i][1] for run in runs])),
       float(np.mean([run.per_object[i][2] for run in runs])))
      for i, name in enumerate(names))
  return DavisTables(
      global_row={c: float(np.mean([run.global_row[c] for run in runs])) for c in GLOBAL_COLUMNS},
      per_object=per_object)
