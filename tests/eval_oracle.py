"""Stand-in predict functions for evaluation tests: the ground truth, read here from a
synthetic dataset's raw files (not through the pipeline), at the padded input resolution.

The tests resize frames to their original size (short_side = the synthetic frames' shorter
side), so a ground-truth mask placed in the top-left corner of the padded canvas is exactly
what the evaluators must bring back. `shift` > 0 makes imperfect predictions instead: masks
rolled by `shift` pixels and scores drawn from each sample's name.
"""

import json
import os
import zlib

import numpy as np
import scipy.io
from PIL import Image
from pycocotools import mask as mask_utils


def _id_map(path):
  with Image.open(path) as image:
    return np.asarray(image)


class GroundTruth:
  """(video_id, exp_id, frame name) -> (H, W) bool ground truth of a synthetic split."""

  def __init__(self, dataset: str, raw: str, split: str):
    self.dataset, self.raw, self.split = dataset, raw, split
    if dataset in ("ytvos", "davis"):
      path = os.path.join(raw, "meta_expressions", split, "meta_expressions.json")
      with open(path) as f:
        videos = json.load(f)["videos"]
      self._obj = {(v, e): int(x["obj_id"]) for v, meta in videos.items()
                   for e, x in meta["expressions"].items()}
    elif dataset == "a2d":
      with open(os.path.join(raw, "a2d_sentences_test_annotations_in_coco_format.json")) as f:
        coco = json.load(f)
      self._rle = {a["image_id"]: a["segmentation"] for a in coco["annotations"]}
    elif dataset == "jhmdb":
      with open(os.path.join(raw, "jhmdb_sentences_samples_metadata.json")) as f:
        self._mat = {v: os.path.join(raw, m.split("jhmdb_sentences/", 1)[1])
                     for v, _, m, _, _ in json.load(f)}
    else:
      subset, name = split.split("/")
      path = os.path.join(raw, "coco", subset, f"instances_{subset}_{name}.json")
      with open(path) as f:
        coco = json.load(f)
      self._images = {str(i["id"]): i for i in coco["images"]}
      self._segmentations = {str(a["image_id"]): a["segmentation"] for a in coco["annotations"]}

  def mask(self, video_id: str, exp_id: str, frame: str) -> np.ndarray:
    if self.dataset in ("ytvos", "davis"):
      ids = _id_map(os.path.join(self.raw, self.split, "Annotations", video_id, f"{frame}.png"))
      return ids == self._obj[(video_id, exp_id)]
    if self.dataset == "a2d":
      number, instance, _ = exp_id.split("_")
      return mask_utils.decode(self._rle[f"v_{video_id}_f_{number}_i_{instance}"]) > 0
    if self.dataset == "jhmdb":
      part_mask = scipy.io.loadmat(self._mat[video_id])["part_mask"]
      return part_mask[:, :, int(exp_id.split("_")[0]) - 1] > 0
    image = self._images[video_id]
    segmentation = self._segmentations[video_id]
    if isinstance(segmentation, dict):  # Compressed RLE.
      return mask_utils.decode(segmentation) > 0
    rles = mask_utils.frPyObjects(segmentation, image["height"], image["width"])
    return mask_utils.decode(mask_utils.merge(rles)) > 0


def _draw(name: str, low: float, high: float) -> float:
  return low + (high - low) * (zlib.crc32(name.encode()) % 1000) / 1000


class Oracle:
  """predict_fn (vdit_jax/evaluation/prediction.py) from a GroundTruth, in numpy."""

  def __init__(self, truth: GroundTruth, queries: str, shift: int = 0):
    self.truth, self.queries, self.shift = truth, queries, shift
    self.calls = 0

  def _canvas(self, mask: np.ndarray, shape, shift: int) -> np.ndarray:
    canvas = np.zeros(shape, np.float32)
    canvas[:mask.shape[0], :mask.shape[1]] = np.roll(mask, shift, axis=1)
    return canvas

  def __call__(self, batch):
    self.calls += 1
    b, n, h, w = batch["frames"].shape[:4]
    rows = [i for i in range(b) if batch["window_valid"][i]]
    if self.queries == "best":
      masks, scores = np.zeros((b, n, h, w), np.float32), np.full((b,), 0.9, np.float32)
      for i in rows:
        video, exp = str(batch["video_id"][i]), str(batch["exp_id"][i])
        for t in np.flatnonzero(batch["frame_valid"][i]):
          gt = self.truth.mask(video, exp, str(batch["frame_names"][i][t]))
          masks[i, t] = self._canvas(gt, (h, w), self.shift)
      return {"masks": masks, "scores": scores}
    masks = np.zeros((b, 2, n, h, w), np.float32)
    scores = np.tile(np.array([0.9, 0.2], np.float32), (b, 1))
    for i in rows:
      video, exp = str(batch["video_id"][i]), str(batch["exp_id"][i])
      t = int(np.argmax(batch["annotated"][i]))
      gt = self.truth.mask(video, exp, str(batch["frame_names"][i][t]))
      masks[i, 0, t] = self._canvas(gt, (h, w), self.shift)
      if self.shift:
        masks[i, 1, t] = self._canvas(gt, (h, w), -2 * self.shift)
        scores[i] = (_draw(video + exp, 0.2, 0.9), _draw(exp + video, 0.2, 0.9))
    return {"masks": masks, "scores": scores}


def collective(predict, mesh):
  """predict_fn that passes `predict`'s outputs through a jitted function of the global batch
  (all processes' rows) that reduces over it, so a process taking a step the others do not
  would hang; the values come back unchanged (n / n is exactly 1)."""
  import jax  # Deferred: the numpy oracle runs without JAX.
  import jax.numpy as jnp
  from vdit_jax.evaluation import prediction

  @jax.jit
  def unchanged(masks, scores, valid):
    n = jnp.sum(valid.astype(jnp.float32))
    return masks * (n / n), scores * (n / n)

  def predict_fn(batch):
    out = predict(batch)
    arrays = prediction.global_batch({"masks": out["masks"], "scores": out["scores"],
                                      "valid": batch["window_valid"]}, mesh, "data")
    masks, scores = unchanged(arrays["masks"], arrays["scores"], arrays["valid"])
    return prediction.local_rows({"masks": masks, "scores": scores}, mesh, "data")

  return predict_fn
