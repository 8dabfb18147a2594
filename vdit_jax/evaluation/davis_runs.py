"""Ref-DAVIS17: the 4 annotator runs as DAVIS id maps, scored, and their mean.

Each object of a sequence owns 4 consecutive expressions, exp_ids 4k .. 4k + 3 for object k
(annotator 1 first-frame, annotator 1 full-video, annotator 2 first-frame, annotator 2
full-video; data_pipelines/davis.py checks the order). Run r takes expression 4k + r of every
object k and, per frame, as VD-IT inference_davis.py:184-272 does: each object's mask
probabilities at the original size (logits resized, then the sigmoid), those below the
threshold zeroed, a constant background channel (config.eval.background_score) in front, and
the argmax: 0 background, k + 1 object k. The id maps go to
<out_dir>/anno_<r>/<sequence>/<frame>.png as palette PNGs (the PASCAL VOC / DAVIS colour
map, every colour distinct: PIL merges equal palette entries on save, which would change the
ids read back).

Each run is scored with the DAVIS unsupervised protocol (vdit_jax.evaluation.davis: void
pixels, all frames, Hungarian matching of predicted to ground-truth ids) against
<davis_dir>/Annotations_unsupervised/480p; the reported figures are the mean of the 4 runs'
(ReferFormer's author, wjn922/ReferFormer issue #30). Each run's CSVs go to its folder, the
mean's to <out_dir>.
"""

import functools
import os

import numpy as np
from PIL import Image

from data_pipelines import davis as davis_data
from vdit_jax import errors
from vdit_jax.evaluation import assembly
from vdit_jax.evaluation import davis
from vdit_jax.evaluation import davis_protocol
from vdit_jax.evaluation import original_size

NUM_RUNS = davis_data.EXPRESSIONS_PER_OBJECT
TASK = "unsupervised"


def run_dir(r: int) -> str:
  return f"anno_{r}"


@functools.lru_cache(maxsize=1)
def palette() -> list[int]:
  """The PASCAL VOC colour map DAVIS annotations use: id i's bits spread over R, G, B from the
  most significant bit down; 256 distinct colours, flattened to [r0, g0, b0, r1, ...]."""
  colours = []
  for i in range(256):
    rgb = [0, 0, 0]
    for bit in range(8):
      for channel in range(3):
        rgb[channel] |= ((i >> (3 * bit + channel)) & 1) << (7 - bit)
    colours.extend(rgb)
  return colours


def merge(logits: np.ndarray, threshold: float, background: float) -> np.ndarray:
  """(K, H, W) objects' mask logits at the original size -> (H, W) uint8 ids (0 background,
  k + 1 object k) as VD-IT inference_davis.py:255-262 merges them."""
  probabilities = original_size.sigmoid(logits)
  probabilities[probabilities < threshold] = 0
  scores = np.concatenate([np.full((1, *logits.shape[1:]), background, np.float32),
                           probabilities])
  return np.argmax(scores, axis=0).astype(np.uint8)


class DavisRuns:
  """Writes and scores the runs (module docstring)."""

  def __init__(self, out_dir: str, davis_dir: str, image_set: str, mask_threshold: float,
               background_score: float):
    if not os.path.isdir(davis.annotation_dir(davis_dir, TASK)):
      raise errors.UserError(
          f"config.data.davis_dir {davis_dir} has no Annotations_unsupervised/480p: Ref-DAVIS17 "
          "is scored against the DAVIS 2017 unsupervised trainval 480p annotations (see "
          "data_pipelines/davis.py)")
    self._out_dir, self._davis_dir, self._image_set = out_dir, davis_dir, image_set
    self._threshold, self._background = mask_threshold, background_score
    # What evaluation writes under out_dir (removed before a run).
    self.outputs = tuple(run_dir(r) for r in range(NUM_RUNS)) + tuple(
        f"{kind}_results-{image_set}.csv" for kind in ("global", "per-sequence"))

  def video(self, video: assembly.Video) -> dict:
    """Writes the video's 4 runs of id maps; returns its part."""
    expressions = {int(e.exp_id): e for e in video.expressions}
    num_objects = len(expressions) // NUM_RUNS
    if sorted(expressions) != list(range(num_objects * NUM_RUNS)):
      raise ValueError(f"DAVIS sequence {video.video_id}: exp_ids {sorted(expressions)} are not "
                       f"0 .. {NUM_RUNS} x objects - 1")
    frame_names = expressions[0].frame_names
    for r in range(NUM_RUNS):
      objects = [expressions[NUM_RUNS * k + r] for k in range(num_objects)]
      directory = os.path.join(self._out_dir, run_dir(r), video.video_id)
      os.makedirs(directory, exist_ok=True)
      for t, name in enumerate(frame_names):
        logits = original_size.logits_at(np.stack([o.masks[t] for o in objects]),
                                         video.orig_size)
        image = Image.fromarray(merge(logits, self._threshold, self._background), mode="P")
        image.putpalette(palette())
        image.save(os.path.join(directory, f"{name}.png"))
    return {"objects": num_objects}

  def finish(self, parts: list[dict]) -> tuple[dict[str, float], dict[str, str], str]:
    """Scores each run on the evaluated sequences and their mean; returns (figures, files,
    text)."""
    sequences = [p["video_id"] for p in parts]
    runs = []
    text = []
    for r in range(NUM_RUNS):
      results = os.path.join(self._out_dir, run_dir(r))
      runs.append(davis.evaluate(self._davis_dir, results, task=TASK, image_set=self._image_set,
                                 progress=False, sequences=sequences))
      davis.write_tables(runs[-1], results, self._image_set)
      text.append(davis.format_tables(runs[-1], f"{run_dir(r)} ({TASK})", per_sequence=False))
    mean = davis_protocol.average_tables(runs)
    paths = davis.write_tables(mean, self._out_dir, self._image_set)
    text.append(davis.format_tables(mean, f"mean of the {NUM_RUNS} annotator runs (the "
                                          "reported figures)", per_sequence=False))
    figures = dict(mean.global_row)
    for r, run in enumerate(runs):
      figures.update({f"{run_dir(r)}/{k}": v for k, v in run.global_row.items()})
    return figures, {"global": paths[0], "per_sequence": paths[1]}, "\n\n".join(text)
