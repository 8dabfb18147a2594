"""Overall IoU, mean IoU and precision@K of each sample's top-scoring mask.

MTTR's metrics.py, which ReferFormer and VD-IT reuse for A2D-Sentences, JHMDB-Sentences
(VD-IT datasets/a2d_eval.py:29-62) and RefCOCO/+/g (VD-IT engine.py:366):
  per sample: the top-scoring candidate (the last of tied scores), I = |P & G|, U = |P | G|,
    IoU = (I + 1e-6) / (U + 1e-6), in float32 as the original's torch code computes it (so
    an empty mask against an empty ground truth has IoU 1, and I / U = 1 / 2 at I = 50 is
    exactly 0.5 in float32, where float64 would give 0.500000005);
  P@K: the share of samples with IoU > K (strict), K in 0.5, 0.6, 0.7, 0.8, 0.9;
  overall IoU: sum of I / sum of U over the samples (NaN when every U is 0);
  mean IoU: the mean per-sample IoU.
Values are fractions (papers quote them x100).
"""

from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from vdit_jax.evaluation.scored_masks import ScoredMasks

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
_EPS = np.float32(1e-6)


def intersection_and_union(sample: ScoredMasks) -> tuple[int, int]:
  """Pixel counts |P & G| and |P | G| of the sample's top-scoring candidate P."""
  pred = sample.masks[sample.top()]
  inter = int(mask_utils.area(mask_utils.merge([pred, sample.gt], intersect=True)))
  return inter, int(mask_utils.area(pred)) + int(mask_utils.area(sample.gt)) - inter


def iou_metrics(samples: Sequence[ScoredMasks]) -> dict[str, float]:
  """P@K ("P@0.5", ...), "overall_iou" and "mean_iou" over the samples."""
  if not samples:
    raise ValueError("no samples to evaluate")
  counts = np.array([intersection_and_union(s) for s in samples], np.int64)
  ious = (counts[:, 0].astype(np.float32) + _EPS) / (counts[:, 1].astype(np.float32) + _EPS)
  ious = ious.astype(np.float64)
  figures = {f"P@{k}": float(np.mean(ious > k)) for k in PRECISION_THRESHOLDS}
  inter, union = counts.sum(0)
  figures["overall_iou"] = float(inter / union) if union else float("nan")
  figures["mean_iou"] = float(np.mean(ious))
  return figures
