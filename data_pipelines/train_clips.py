"""One training sample -> one augmented, unpadded training example.

For a `sampling.Sample` (an expression anchored on a frame of a video): draw the crop and
resize (`transforms.random_geometry`) first, then the clip's frame indices
(`sampling.ClipSampling`), decode the masks, and only if some object box survives the crop
decode the frames, at a reduced JPEG scale where the resize allows; then flip and
photometric jitter (`transforms.augment`). A single image with num_frames > 1 (RefCOCO)
becomes a pseudo-video (`transforms.pseudo_video`). A clip without a valid frame is retried
at another anchor of the same expression, max_resample times, then dropped with a warning.

Example (T = num_frames, (h, w) the augmented size; batching pads frames and masks):
  frames (T, h, w, 3) uint8; masks (T, h, w) bool; boxes (T, 4) float32 cxcywh normalised
  by `size`; valid (T,) bool: the object is visible in an annotated frame; annotated (T,)
  bool: the frame has ground truth (A2D / JHMDB: the anchor frame only, as in the
  original); frame_indices (T,) int32 (in the video's frame list); size, orig_size (2,)
  int32 (H, W); caption, video_id, exp_id str; plus what `tokenize(caption)` returns.

Every random choice comes from the generator grain's `random_map` passes, seeded from
(seed, element index).
"""

from typing import Any

from absl import logging
import grain
import numpy as np

from data_pipelines import bad_input
from data_pipelines import decoding
from data_pipelines import sampling
from data_pipelines import transforms


class TrainClip(grain.transforms.RandomMap):
  """(Sample, where) -> a training example (module docstring), or None if no valid clip was
  found or (skip_bad) the sample's frames or masks do not decode.

  Args:
    clip_sampling: frame indices of a clip (config.data.sampling).
    augmentation: crop / resize / flip ranges (config.data.augmentation).
    pseudo_video: how a single image becomes a clip (config.data.pseudo_video).
    max_resample: retries of a clip without a valid frame (config.data.max_resample).
    skip_bad: config.data.skip_bad_records.
    tokenize: optional, picklable `caption -> {name: fixed-shape array}`, added to the
      example (vdit_jax.tokenizers.CaptionTokenizer).
  """

  def __init__(self, *, clip_sampling: sampling.ClipSampling,
               augmentation: transforms.Augmentation, pseudo_video: transforms.PseudoVideo,
               max_resample: int, skip_bad: bool, tokenize: decoding.Tokenize | None):
    self._sampling, self._augmentation = clip_sampling, augmentation
    self._pseudo_video = pseudo_video
    self._max_resample, self._skip_bad, self._tokenize = max_resample, skip_bad, tokenize

  def random_map(self, element, rng: np.random.Generator):
    sample, where = element
    return bad_input.call_or_skip("clips", self._skip_bad, self._example, sample, where, rng)

  def _clip(self, sample: sampling.Sample, where: str, rng: np.random.Generator):
    """(augmented clip, frame indices, annotated); the clip is None, its frames never
    decoded, when no object box survives the random crop."""
    record, num_frames = sample.record, self._sampling.num_frames
    caption = decoding.clean_caption(sample.expression.text)
    geometry = transforms.random_geometry(rng, record.height, record.width, self._augmentation)
    if len(record.frame_names) == 1 and num_frames > 1:
      indices = np.zeros(num_frames, np.int64)
      annotated = np.ones(num_frames, bool)
      masks, _ = decoding.load_masks(sample, indices[:1], where)
      image = np.asarray(decoding.load_frames(record, indices[:1], where)[0])
      clip = transforms.pseudo_video(image, masks[0], caption, rng, num_frames,
                                     self._pseudo_video)
    else:
      indices = self._sampling.indices(rng, sample)
      masks, annotated = decoding.load_masks(sample, indices, where)
      boxes, valid = transforms.mask_boxes(masks)
      if not transforms.visible_in(boxes, valid, geometry.region).any():
        return None, indices, annotated
      draft = transforms.draft_size(geometry, record.height, record.width)
      clip = transforms.Clip(decoding.load_frames(record, indices, where, draft), masks, boxes,
                             valid, caption)
    return transforms.augment(clip, rng, geometry, self._augmentation), indices, annotated

  def _example(self, sample: sampling.Sample, where: str, rng: np.random.Generator):
    for _ in range(self._max_resample + 1):
      clip, indices, annotated = self._clip(sample, where, rng)
      if clip is not None and clip.valid.any():
        return self._finish(sample, clip, indices, annotated)
      sample = sampling.resample(rng, sample)
    logging.warning("%s: expression %r has no valid clip after %d tries; dropped", where,
                    sample.expression.exp_id, self._max_resample + 1)
    return None

  def _finish(self, sample: sampling.Sample, clip: transforms.Clip, indices: np.ndarray,
              annotated: np.ndarray) -> dict[str, Any]:
    size, record = clip.size, sample.record
    example = {
        "frames": clip.frames,
        "masks": clip.masks,
        "boxes": transforms.boxes_cxcywh(clip.boxes, size),
        "valid": clip.valid & annotated,
        "annotated": annotated,
        "frame_indices": indices.astype(np.int32),
        "size": np.array(size, np.int32),
        "orig_size": np.array([record.height, record.width], np.int32),
        "caption": clip.caption,
        "video_id": record.video_id,
        "exp_id": sample.expression.exp_id,
    }
    if self._tokenize is not None:
      example.update(self._tokenize(clip.caption))
    return example
