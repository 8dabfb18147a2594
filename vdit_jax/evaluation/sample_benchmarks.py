"""Benchmarks scored per annotated sample from every query: A2D / JHMDB-Sentences, RefCOCO/+/g.

A sample is one expression at its annotated frame (A2D, JHMDB) or image (RefCOCO). Each
query's mask goes back to the original size as the original post-processes it (VD-IT
models/postprocessors.py:33-53, 137-148: logits resized, then sigmoid > threshold) and is
kept, with its score, as a COCO RLE (vdit_jax.evaluation.scored_masks).

A2D / JHMDB-Sentences (MTTR's protocol, which ReferFormer and VD-IT use): segm mAP of all
queries' masks (the figure papers report) and of each sample's top-scoring one, through
pycocotools (vdit_jax.evaluation.coco_map), and overall IoU, mean IoU and P@0.5..0.9 of the
top-scoring mask (vdit_jax.evaluation.mask_iou). Sample ids are MTTR's COCO image ids,
"v_<video>_f_<frame>_i_<instance>" (A2D) and "v_<video>_f_<frame>" (JHMDB). The COCO ground
truth and results are written as JSON, so pycocotools or any COCO tool can re-score them.

RefCOCO / RefCOCO+ / RefCOCOg: overall IoU, mean IoU and P@K of the top-scoring mask per
subset (VD-IT engine.py:366-371 computes them; its main.py:189-191 assert kept them from
running).
"""

import json
import os

from vdit_jax.evaluation import assembly
from vdit_jax.evaluation import coco_map
from vdit_jax.evaluation import mask_iou
from vdit_jax.evaluation import original_size
from vdit_jax.evaluation import scored_masks
from vdit_jax.evaluation import text_tables

GROUND_TRUTH = "coco_ground_truth.json"
RESULTS = "coco_results.json"


def sample_id(dataset: str, split: str, video_id: str, exp_id: str) -> str:
  """The sample's id: MTTR's COCO image id for A2D ("<frame>_<instance>_<n>" exp_ids) and
  JHMDB ("<frame>_<n>"), with "_<n>" added for a repeated sample (n > 0); RefCOCO
  "<subset>/<entry>"."""
  if dataset == "refcoco":
    return f"{split.split('/')[0]}/{video_id}"
  *fields, repeat = exp_id.split("_")
  key = f"v_{video_id}_f_{fields[0]}" + (f"_i_{fields[1]}" if dataset == "a2d" else "")
  return key if repeat == "0" else f"{key}_{repeat}"


def _samples(parts: list[dict]) -> list[scored_masks.ScoredMasks]:
  samples = [scored_masks.ScoredMasks(image_id=s["image_id"], gt=s["gt"], masks=tuple(s["masks"]),
                                      scores=tuple(s["scores"]))
             for p in parts for s in p["samples"]]
  return sorted(samples, key=lambda s: s.image_id)


def _write_json(path: str, value) -> str:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f)
  return path


class SampleBenchmark:
  """A2D / JHMDB-Sentences (dataset "a2d", "jhmdb") or RefCOCO/+/g ("refcoco"); module
  docstring."""

  def __init__(self, out_dir: str, dataset: str, mask_threshold: float):
    self._out_dir, self._dataset, self._threshold = out_dir, dataset, mask_threshold
    # What evaluation writes under out_dir (removed before a run).
    self.outputs = () if dataset == "refcoco" else (GROUND_TRUTH, RESULTS)

  def video(self, video: assembly.Video) -> dict:
    """The video's samples as JSON-ready ScoredMasks fields."""
    samples = []
    for e in video.expressions:
      if e.gt is None:
        raise ValueError(f"{video.key} expression {e.exp_id}: the window carries no gt_mask")
      masks = original_size.binary_at(e.masks, video.orig_size, self._threshold)
      sample = scored_masks.ScoredMasks.from_arrays(
          sample_id(self._dataset, video.split, video.video_id, e.exp_id), e.gt, masks,
          e.scores)
      samples.append({"image_id": sample.image_id, "gt": sample.gt,
                      "masks": list(sample.masks), "scores": list(sample.scores)})
    return {"samples": samples}

  def finish(self, parts: list[dict]) -> tuple[dict[str, float], dict[str, str], str]:
    """(figures, files, text) of all samples (module docstring)."""
    samples = _samples(parts)
    if self._dataset == "refcoco":
      figures = {}
      for subset in sorted({s.image_id.split("/")[0] for s in samples}):
        subset_samples = [s for s in samples if s.image_id.split("/")[0] == subset]
        figures.update({f"{subset}/{k}": v
                        for k, v in mask_iou.iou_metrics(subset_samples).items()})
      return figures, {}, f"RefCOCO: {len(samples)} samples\n{text_tables.figure_table(figures)}"
    figures = coco_map.segm_ap(samples)
    figures.update(coco_map.segm_ap(samples, top1=True))
    figures.update(mask_iou.iou_metrics(samples))
    files = {
        "ground_truth": _write_json(os.path.join(self._out_dir, GROUND_TRUTH),
                                    coco_map.ground_truth(samples)),
        "results": _write_json(os.path.join(self._out_dir, RESULTS),
                               coco_map.detections(samples)),
    }
    return figures, files, (f"{self._dataset}: {len(samples)} samples; mAP of all queries' "
                            f"masks and ({coco_map.TOP1_PREFIX.strip()}) of each sample's "
                            f"top-scoring one\n{text_tables.figure_table(figures)}")
