"""Training examples stacked into batches of a few static shapes (config.data.buckets).

Clips come out of augmentation at many sizes; the model compiles once per input shape. A
batch therefore takes the smallest bucket (H, W) that holds all of its clips: frames and
masks are zero-padded at the bottom / right, each copied once into its slot, and `pad_mask`
marks the padding (True), DETR's convention.
"""

import dataclasses
from typing import Any

import numpy as np

from data_pipelines import transforms
from vdit_jax import errors

# Example arrays (T, h, w, ...) that a batch pads to its bucket (H, W).
_PADDED = ("frames", "masks")


def check_buckets(buckets: tuple[tuple[int, int], ...], augmentation: transforms.Augmentation,
                  batch_size: int) -> None:
  """Raises a ConfigError unless every batch the augmentation can make fits a bucket.

  A clip is at most max(scales) on its shorter side and max_size on its longer; a batch of
  more than one clip may mix orientations, and then needs a max_size square.
  """
  short, long = max(augmentation.scales), augmentation.max_size
  needs = [(short, long), (long, short)] + ([(long, long)] if batch_size > 1 else [])
  for h, w in needs:
    if not any(b[0] >= h and b[1] >= w for b in buckets):
      raise errors.ConfigError(
          f"config.data.buckets {[tuple(b) for b in buckets]}: none holds {h}x{w} (H x W), "
          f"which batches of {batch_size} clips of config.data.augmentation (shorter side "
          f"up to {short}, longer up to {long}) can need")


@dataclasses.dataclass(frozen=True)
class BucketBatch:
  """Stacks examples, padding frames and masks to the smallest bucket that holds all of them
  (each copied once, into its slot of the batch), and adds their pad_mask (B, H, W)."""
  buckets: tuple[tuple[int, int], ...]

  def __call__(self, examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    sizes = [tuple(e["size"]) for e in examples]
    bucket = transforms.choose_bucket(sizes, self.buckets)
    batch = {key: transforms.pad_batch([e[key] for e in examples], bucket, (1, 2))
             if key in _PADDED else np.array([e[key] for e in examples])
             for key in examples[0]}
    batch["pad_mask"] = np.stack([transforms.padding_mask(s, bucket) for s in sizes])
    return batch
