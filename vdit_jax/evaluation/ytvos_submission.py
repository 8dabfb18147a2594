"""Ref-YouTube-VOS: the submission its evaluation server scores, and J&F where masks exist.

The valid split has no public ground truth: its figures come from the competition's CodaLab
server, which takes a zip whose top-level folder is Annotations/, holding
Annotations/<video>/<exp_id>/<frame>.png for every frame of every expression of the split's
videos: single-channel 'L' PNGs at the original frame size, 0 background and 255 object
(VD-IT inference_ytvos.py:266-275 writes them; MTTR trainer.py:277-283 zips them with
shutil.make_archive(base_dir="Annotations"), as here). Masks are the original's: the
selected query's probabilities resized to the original size as logits, then > threshold
(vdit_jax.evaluation.original_size).

A split whose windows carry masks (config.eval.preprocessing.ground_truth, e.g. a held-out
part of train) is also scored as the DAVIS toolkit's measures are pooled for referring video
segmentation (MeViS tools/eval_mevis.py): per expression, J and F per annotated frame
(vdit_jax.evaluation.metrics), averaged over its frames; J, F and J&F = (J + F) / 2 are the
means over expressions.
"""

import os
import shutil

import numpy as np
from PIL import Image

from vdit_jax.evaluation import assembly
from vdit_jax.evaluation import metrics
from vdit_jax.evaluation import original_size
from vdit_jax.evaluation import text_tables

ANNOTATIONS = "Annotations"
SUBMISSION = "submission.zip"


class YtvosSubmission:
  """Writes <out_dir>/Annotations/... and <out_dir>/submission.zip (module docstring)."""

  outputs = (ANNOTATIONS, SUBMISSION)

  def __init__(self, out_dir: str, mask_threshold: float):
    self._out_dir, self._threshold = out_dir, mask_threshold

  def video(self, video: assembly.Video) -> dict:
    """Writes the video's PNGs; returns its part: frames written and, per expression with
    ground truth, [exp_id, J, F]."""
    frames, scores = 0, []
    for expression in video.expressions:
      directory = os.path.join(self._out_dir, ANNOTATIONS, video.video_id, expression.exp_id)
      os.makedirs(directory, exist_ok=True)
      masks = []
      for name, probabilities in zip(expression.frame_names, expression.masks):
        mask = original_size.binary_at(probabilities, video.orig_size, self._threshold)
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(
            os.path.join(directory, f"{name}.png"))
        masks.append(mask)
      frames += len(masks)
      if expression.gt is not None and expression.annotated.any():
        pred = np.stack(masks)[expression.annotated]
        gt = expression.gt[expression.annotated]
        scores.append([expression.exp_id,
                       float(np.mean(metrics.region_similarity(pred, gt))),
                       float(np.mean(metrics.boundary_f_measure(pred, gt)))])
    return {"frames": frames, "expressions": len(video.expressions), "scores": scores}

  def finish(self, parts: list[dict]) -> tuple[dict[str, float], dict[str, str], str]:
    """Zips the submission; returns (figures, files, text)."""
    base = os.path.join(self._out_dir, os.path.splitext(SUBMISSION)[0])
    os.makedirs(os.path.join(self._out_dir, ANNOTATIONS), exist_ok=True)
    archive = shutil.make_archive(base, "zip", root_dir=self._out_dir, base_dir=ANNOTATIONS)
    frames = sum(p["frames"] for p in parts)
    expressions = sum(p["expressions"] for p in parts)
    text = [f"Ref-YouTube-VOS submission: {archive} ({len(parts)} videos, {expressions} "
            f"expressions, {frames} frames); upload it to the competition's CodaLab server."]
    scores = [s for p in parts for s in p["scores"]]
    figures = {}
    if scores:
      j = float(np.mean([s[1] for s in scores]))
      f = float(np.mean([s[2] for s in scores]))
      figures = {"J&F": (j + f) / 2, "J": j, "F": f}
      text.append(f"Scored against the split's own masks: {len(scores)} of {expressions} "
                  "expressions have ground truth.")
      text.append(text_tables.figure_table(figures))
    else:
      text.append("The split has no masks: no J&F here (the server scores the submission).")
    return figures, {"submission": archive}, "\n".join(text)
