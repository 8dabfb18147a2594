"""A2D-Sentences / JHMDB-Sentences segmentation mAP through pycocotools (MTTR's protocol).

Each sample is one COCO "image" with exactly one ground-truth mask (category 1, area = its
pixel count, not crowd, as MTTR's create_gt_in_coco_format.py writes it); the detections are
the sample's candidate masks with their scores, and COCOeval runs with iouType "segm" and
useCats = 0 (VD-IT engine.py:251-258). pycocotools' conventions hold: masks are matched at
IoU >= each threshold, an empty mask has IoU 0 even with an empty ground truth, and a figure
with no ground truth in its area range is -1.

Two variants, labelled in the result keys:
  all queries (the figure MTTR, ReferFormer and VD-IT report): every candidate is a detection;
  top-1 ("top-1 " keys): only each sample's top-scoring candidate, the mask a user gets.
(ReferFormer issue #39 discusses which of the two papers quote.)
"""

import contextlib
import io
from typing import Sequence

from pycocotools import coco
from pycocotools import cocoeval
from pycocotools import mask as mask_utils

from vdit_jax.evaluation.scored_masks import ScoredMasks

# COCOeval.stats[:6], named as VD-IT engine.py:257 names them.
AP_LABELS = ("mAP 0.5:0.95", "AP 0.5", "AP 0.75", "AP 0.5:0.95 S", "AP 0.5:0.95 M",
             "AP 0.5:0.95 L")
TOP1_PREFIX = "top-1 "


def ground_truth(samples: Sequence[ScoredMasks]) -> dict:
  """The samples' ground truth as a COCO dataset dict (one image and one mask per sample)."""
  ids = [s.image_id for s in samples]
  if len(set(ids)) != len(ids):
    raise ValueError("sample image_ids must be unique")
  return {
      "images": [{"id": s.image_id, "height": s.gt["size"][0], "width": s.gt["size"][1]}
                 for s in samples],
      "annotations": [{"id": i + 1, "image_id": s.image_id, "category_id": 1,
                       "segmentation": dict(s.gt), "area": float(mask_utils.area(s.gt)),
                       "iscrowd": 0} for i, s in enumerate(samples)],
      "categories": [{"id": 1, "name": "dummy_class"}],
  }


def detections(samples: Sequence[ScoredMasks], *, top1: bool = False) -> list[dict]:
  """The candidates as COCO results, every one or each sample's top-scoring one."""
  return [{"image_id": s.image_id, "category_id": 1, "segmentation": dict(s.masks[k]),
           "score": s.scores[k]}
          for s in samples for k in ([s.top()] if top1 else range(len(s.masks)))]


def segm_ap(samples: Sequence[ScoredMasks], *, top1: bool = False) -> dict[str, float]:
  """COCOeval segm AP of the samples' candidates, useCats = 0.

  Returns:
    AP_LABELS -> COCOeval.stats[:6] (fractions); keys start with TOP1_PREFIX when top1.
  """
  if not samples:
    raise ValueError("no samples to evaluate")
  # pycocotools prints its progress and summary; the caller prints the figures.
  with contextlib.redirect_stdout(io.StringIO()):
    gt = coco.COCO()
    gt.dataset = ground_truth(samples)
    gt.createIndex()
    evaluation = cocoeval.COCOeval(gt, gt.loadRes(detections(samples, top1=top1)), "segm")
    evaluation.params.useCats = 0
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  prefix = TOP1_PREFIX if top1 else ""
  return {prefix + label: float(v) for label, v in zip(AP_LABELS, evaluation.stats[:6])}
