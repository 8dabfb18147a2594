"""One referring-segmentation sample: its ground-truth mask and the model's scored candidates.

A2D-Sentences, JHMDB-Sentences and RefCOCO/+/g are scored per sample (an annotated frame and
one expression) from all the model's query masks and their scores, as MTTR, ReferFormer and
VD-IT submit them (VD-IT engine.py:231-237). Masks are kept as COCO run-length encodings (str
counts, JSON-ready), so a whole test set fits in memory and gathers cheaply across processes.
"""

import dataclasses

import numpy as np
from pycocotools import mask as mask_utils


def encode(mask: np.ndarray) -> dict:
  """(H, W) mask (non-zero = foreground) -> COCO RLE {"size": [H, W], "counts": str}."""
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"expected one (H, W) mask, got shape {mask.shape}")
  rle = mask_utils.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
  return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


@dataclasses.dataclass(frozen=True)
class ScoredMasks:
  """One sample.

  image_id: the sample's id, unique in an evaluation (A2D "v_<video>_f_<frame>_i_<instance>",
    JHMDB "v_<video>_f_<frame>", as MTTR's COCO-format ground truth names them).
  gt: COCO RLE of the (H, W) ground-truth mask.
  masks: COCO RLEs of the K >= 1 candidate masks, in query order, all (H, W).
  scores: the K candidates' scores.
  """
  image_id: str
  gt: dict
  masks: tuple[dict, ...]
  scores: tuple[float, ...]

  def __post_init__(self):
    if not self.masks or len(self.masks) != len(self.scores):
      raise ValueError(f"sample {self.image_id}: {len(self.masks)} masks and "
                       f"{len(self.scores)} scores; need as many of each, at least one")
    if not np.all(np.isfinite(self.scores)):
      raise ValueError(f"sample {self.image_id}: non-finite scores {self.scores}")
    sizes = {tuple(m["size"]) for m in self.masks}
    if sizes != {tuple(self.gt["size"])}:
      raise ValueError(f"sample {self.image_id}: candidate mask sizes {sorted(sizes)} differ "
                       f"from the ground truth's {tuple(self.gt['size'])}")

  @classmethod
  def from_arrays(cls, image_id: str, gt: np.ndarray, masks: np.ndarray,
                  scores: np.ndarray) -> "ScoredMasks":
    """gt: (H, W); masks: (K, H, W) (non-zero = foreground); scores: (K,)."""
    return cls(image_id=str(image_id), gt=encode(gt), masks=tuple(encode(m) for m in masks),
               scores=tuple(float(s) for s in np.asarray(scores).reshape(-1)))

  def top(self) -> int:
    """Index of the top-scoring candidate; the last of tied top scores, as VD-IT
    datasets/a2d_eval.py:47 (an ascending sort's last element) picks it."""
    scores = np.asarray(self.scores)
    return int(np.flatnonzero(scores == scores.max())[-1])
