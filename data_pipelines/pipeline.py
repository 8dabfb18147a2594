"""grain train and eval pipelines over built shards (TFRecord or ArrayRecord).

Config fields read (ml_collections ConfigDict, configs/common.py; [default] where optional):

  config.seed                       shuffles and augmentation
  config.data.shards_dir            root of the built shards: <shards_dir>/<split>/
  config.data.subsets               [none] RefCOCO: read <subset>/<split> of each subset
  config.data.format                "tfrecord" (streamed) or "array_record" (random access)
  config.data.worker_count          grain worker processes (0: in the calling process)
  config.data.skip_bad_records      True: skip + count + log corrupt records/frames/masks
  config.data.cycle_length          [4] TFRecord shards read at once (interleaved);
                                    ArrayRecord: records read ahead, by as many threads
  config.data.worker_buffer_size    [2] batches each worker prefetches
 training only:
  config.data.split                 the training split
  config.data.batch_size            GLOBAL clips per step; each of the process_count JAX
                                    processes yields batch_size // process_count
  config.data.shuffle_window        samples per shuffle window
  config.data.augmentation.{num_frames, local_window, num_global_frames (= num_frames - 3),
      reverse_prob, scales, max_size, crop_resize_scales, crop_min_size, crop_max_size,
      select_prob, flip_prob}      clip sampling and augmentation (sampling.py, transforms.py)
  config.data.pseudo_video.{perspective, rotate_degrees, translate, brightness,
      hue_saturation, motion_blur_prob, motion_blur_kernels, shuffle_frames}
                                    [the original's] single-image records (RefCOCO)
  config.data.buckets               [(H, W) per orientation + a square one, from max(scales)
                                    and max_size rounded up to size_divisor] static shapes
  config.data.size_divisor          [32] rounding of the default buckets (the original
                                    collate pads to /32)
  config.data.max_resample          [10] retries of a clip without a valid frame
  config.data.num_epochs            [None] None: repeat forever
 evaluation only:
  config.eval.split                 the evaluation split
  config.eval.preprocessing.{short_side, max_size, size_divisor, window}
                                    eval resize, padding to a multiple of size_divisor, and
                                    frames per window (0: the whole video in one window)

Frames are uint8 RGB, 0 on padding: the model normalises them on the device with
config.data.mean / std (vdit_jax.models.normalize.normalize_frames, which also zeroes the
padding in normalised space, as the original's collate does), a quarter of the bytes of
float32 frames to make here and to copy to the device.

Train batches (B = per-process batch, T = num_frames, (H, W) the smallest bucket that holds
every clip of the batch):
  frames (B, T, H, W, 3) uint8; pad_mask (B, H, W) bool, True on padding;
  masks (B, T, H, W) bool; boxes (B, T, 4) float32 cxcywh normalised by `size`;
  valid (B, T) bool: the object is visible in an annotated frame; annotated (B, T) bool: the
  frame has ground truth (A2D / JHMDB: the anchor frame only, as in the original);
  frame_indices (B, T) int32 (in the video's frame list); size, orig_size (B, 2) int32 (H, W);
  caption, video_id, exp_id (B,) str; plus what `tokenize(caption)` returns, stacked.

Eval elements, one window of one (video, expression) each, with a batch axis of 1:
  frames (1, N, H, W, 3) uint8; pad_mask (1, H, W) bool; frame_valid (1, N) bool (False on
  the repeated last frame that pads the final window); annotated (1, N) bool (the anchor frame
  of A2D / JHMDB expressions); frame_indices (1, N) int32; frame_names (1, N) str ("" on
  padding); window, num_windows (1,) int32; size, orig_size (1, 2) int32 (H, W); caption,
  video_id, exp_id (1,) str; anchored expressions and images also gt_mask (1, H0, W0) bool
  (the anchor frame's mask at the original size).
  Videos are cut into windows of `window` frames (the last one padded); an expression
  anchored on a frame (A2D / JHMDB: meta "frame/<exp_id>") gets one window of `window`
  frames centred on it, edge frames repeated, as the original's A2D evaluation; a
  single-frame record (RefCOCO) is anchored on its image.

Determinism: every random choice comes from grain's `random_map` generator, seeded from
(seed, element index); shuffles from `seed`. `iterator.get_state()` / `set_state()` restore a
pipeline mid-epoch to the same next batch.

Bad input: a corrupt record, frame or mask raises an error naming the shard, record and
frame; with skip_bad_records it is skipped, counted (`skipped_counts()`, per decoding
process) and logged. A truncated or CRC-failing TFRecord ends that shard.
"""

import collections
import dataclasses
import io
from typing import Any, Callable

from absl import logging
import grain
import numpy as np
from PIL import Image

from data_pipelines import raw
from data_pipelines import raw_io
from data_pipelines import records
from data_pipelines import sampling
from data_pipelines import shards
from data_pipelines import transforms

Tokenize = Callable[[str], dict[str, np.ndarray]]

_SKIPPED = collections.Counter()


class ClipError(ValueError):
  """A frame or mask of a record that does not decode or does not fit the video."""


_BAD_INPUT = (ClipError, records.RecordError, shards.ShardError, raw_io.RawDataError,
              sampling.SampleError)


def skipped_counts() -> dict[str, int]:
  """What skip_bad_records skipped in this process: {"records": n, "clips": n, "shards": n}.

  Counted in the process that decodes: with worker_count > 0 that is a grain worker, so
  this process sees only worker_count=0 runs; the logged warnings are the record.
  """
  return dict(_SKIPPED)


def _skip(kind: str, error: Exception) -> None:
  _SKIPPED[kind] += 1
  logging.warning("skipping a bad %s (%d so far): %s", kind[:-1], _SKIPPED[kind], error)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The pipeline's view of the config (see the module docstring); training fields keep
  their defaults in an evaluation config and vice versa."""
  shards_dir: str
  splits: tuple[str, ...]
  format: str = "tfrecord"
  seed: int = 0
  worker_count: int = 0
  worker_buffer_size: int = 2
  cycle_length: int = 4
  skip_bad_records: bool = False
  batch_size: int = 1
  shuffle_window: int = 1024
  num_frames: int = 5
  local_window: int = sampling.MAX_LOCAL_OFFSET
  reverse_prob: float = sampling.REVERSE_P
  augmentation: transforms.Augmentation = transforms.Augmentation()
  pseudo_video: transforms.PseudoVideo = transforms.PseudoVideo()
  buckets: tuple[tuple[int, int], ...] = ()
  max_resample: int = 10
  num_epochs: int | None = None
  eval_short_side: int = transforms.EVAL_SIZE
  eval_max_size: int = transforms.EVAL_MAX_SIZE
  eval_size_divisor: int = 16
  eval_window: int = 0

  @classmethod
  def _common(cls, config, split: str) -> dict[str, Any]:
    data = config.data
    if data.format not in shards.FORMATS:
      raise ValueError(f"config.data.format {data.format!r} not in {shards.FORMATS}")
    subsets = data.get("subsets", None)
    return dict(
        shards_dir=data.shards_dir,
        splits=tuple(f"{s}/{split}" for s in subsets) if subsets else (split,),
        format=data.format, seed=config.seed, worker_count=data.worker_count,
        worker_buffer_size=data.get("worker_buffer_size", 2),
        cycle_length=data.get("cycle_length", 4), skip_bad_records=data.skip_bad_records)

  @classmethod
  def for_train(cls, config, process_count: int = 1) -> "DataConfig":
    data, aug = config.data, config.data.augmentation
    if aug.num_frames != 1 and aug.num_global_frames != aug.num_frames - 3:
      raise ValueError(f"config.data.augmentation: num_global_frames {aug.num_global_frames} "
                       f"must be num_frames - 3 = {aug.num_frames - 3}")
    if data.batch_size % process_count:
      raise ValueError(f"config.data.batch_size {data.batch_size} is not divisible by "
                       f"{process_count} processes")
    augmentation = transforms.Augmentation(
        scales=tuple(aug.scales), max_size=aug.max_size,
        crop_resize_scales=tuple(aug.crop_resize_scales), crop_min_size=aug.crop_min_size,
        crop_max_size=aug.crop_max_size, select_prob=aug.select_prob, flip_prob=aug.flip_prob)
    pseudo = data.get("pseudo_video", None)
    pseudo_video = transforms.PseudoVideo(**{
        k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in pseudo.items()
    }) if pseudo else transforms.PseudoVideo()
    divisor = data.get("size_divisor", 32)
    landscape = transforms.pad_multiple((max(aug.scales), aug.max_size), divisor)
    square = transforms.pad_multiple((aug.max_size, aug.max_size), divisor)
    buckets = data.get("buckets", None) or (landscape, landscape[::-1], square)
    return cls(
        **cls._common(config, data.split), batch_size=data.batch_size // process_count,
        shuffle_window=data.shuffle_window, num_frames=aug.num_frames,
        local_window=aug.local_window, reverse_prob=aug.reverse_prob,
        augmentation=augmentation, pseudo_video=pseudo_video,
        buckets=tuple(tuple(b) for b in buckets), max_resample=data.get("max_resample", 10),
        num_epochs=data.get("num_epochs", None))

  @classmethod
  def for_eval(cls, config) -> "DataConfig":
    pre = config.eval.preprocessing
    return cls(**cls._common(config, config.eval.split), eval_short_side=pre.short_side,
               eval_max_size=pre.max_size, eval_size_divisor=pre.size_divisor,
               eval_window=pre.window)


def _shard_paths(cfg: DataConfig, process_index: int, process_count: int) -> list[str]:
  """This process's shards of every split directory the config names."""
  paths = [p for split in cfg.splits for p in shards.list_shards(cfg.shards_dir, split)]
  return shards.process_shards(paths, process_index, process_count)


# Reading records -----------------------------------------------------------------------------


class _TFRecordShardIterator(grain.DatasetIterator):
  """(record bytes, where) of one TFRecord shard, CRC-checked; state = records consumed."""

  def __init__(self, path: str, skip_bad: bool):
    super().__init__()
    self._path, self._skip_bad = path, skip_bad
    self._index = 0
    self._records = shards.read_tfrecord(path)

  def __next__(self):
    try:
      data = next(self._records)
    except shards.ShardError as e:
      if not self._skip_bad:
        raise
      _skip("shards", e)
      self._records = iter(())
      raise StopIteration from None
    where = shards.location(self._path, self._index)
    self._index += 1
    return data, where

  def get_state(self):
    return {"index": self._index}

  def set_state(self, state):
    self._index = state["index"]
    self._records = shards.read_tfrecord(self._path, start=self._index)


class _TFRecordShard(grain.IterDataset):

  def __init__(self, path: str, skip_bad: bool):
    super().__init__()
    self._path, self._skip_bad = path, skip_bad

  def __iter__(self):
    return _TFRecordShardIterator(self._path, self._skip_bad)


@dataclasses.dataclass(frozen=True)
class _ArrayRecordReader:
  source: shards.ArrayRecordSource

  def __call__(self, index: int) -> tuple[bytes, str]:
    return self.source[index], self.source.where(index)


@dataclasses.dataclass(frozen=True)
class _OpenShard:
  skip_bad: bool

  def __call__(self, path: str) -> grain.IterDataset:
    return _TFRecordShard(path, self.skip_bad)


def _records(cfg: DataConfig, paths: list[str], shuffle: bool, num_epochs: int | None
             ) -> tuple[grain.IterDataset, int | None]:
  """(record bytes, where) pairs of `paths`, video order shuffled per epoch if `shuffle`.

  Also returns how many units (TFRecord shards, ArrayRecord records) grain workers split
  between them, None if unbounded.
  """
  if cfg.format == "array_record":
    source = shards.ArrayRecordSource(paths)
    ds = grain.MapDataset.range(len(source))
    if shuffle:
      ds = ds.shuffle(seed=cfg.seed)
    # Records are whole videos (MBs): read a few ahead, not grain's default 500.
    read = grain.ReadOptions(num_threads=cfg.cycle_length, prefetch_buffer_size=cfg.cycle_length)
    ds = ds.repeat(num_epochs).map(_ArrayRecordReader(source)).to_iter_dataset(read)
    units = len(source)
  else:
    ds = grain.MapDataset.source(paths)
    if shuffle:
      ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(num_epochs).map(_OpenShard(cfg.skip_bad_records))
    cycle = min(cfg.cycle_length, len(paths)) if shuffle else 1
    ds = grain.experimental.InterleaveIterDataset(ds, cycle_length=cycle)
    units = len(paths)
  return ds, None if num_epochs is None else units * num_epochs


class _Expand(grain.experimental.FlatMapTransform):
  """(record bytes, where) -> its samples (or eval windows), each as (item, where)."""

  max_fan_out = 1 << 20

  def __init__(self, items: Callable[[raw.VideoRecord], list], skip_bad: bool):
    self._items, self._skip_bad = items, skip_bad

  def flat_map(self, element):
    data, where = element
    try:
      record = records.decode(data, where=where)
      items = self._items(record)
    except _BAD_INPUT as e:
      if not self._skip_bad:
        raise
      _skip("records", e)
      return []
    return [(item, where) for item in items]


# Decoding clips ------------------------------------------------------------------------------


def _decode_frame(record: raw.VideoRecord, index: int, where: str,
                  draft: tuple[int, int] | None = None) -> Image.Image:
  """Frame `index` as a decoded RGB PIL image (H, W); a JPEG decoded at a reduced scale no
  smaller than `draft` (H, W) if given."""
  name = record.frame_names[index]
  try:
    image = Image.open(io.BytesIO(record.frames[index]))
    size = image.height, image.width
    if draft is not None and image.format == "JPEG":
      image.draft("RGB", draft[::-1])
    frame = image if image.mode == "RGB" else image.convert("RGB")
    frame.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise ClipError(f"{where} ({record.video_id}): frame {name!r} (#{index}) does not decode "
                    f"as {record.frame_format}: {e}") from e
  if size != (record.height, record.width):
    raise ClipError(f"{where} ({record.video_id}): frame {name!r} is {size}, the record says "
                    f"{(record.height, record.width)}")
  return frame


def _decode_mask(record: raw.VideoRecord, index: int, obj_ids: tuple[int, ...], where: str,
                 out: np.ndarray | None = None) -> np.ndarray:
  """The union of the objects' pixels over the id maps of frame `index`: (H, W) bool,
  written into `out` (zeros) if given."""
  name = record.frame_names[index]
  mask = np.zeros((record.height, record.width), bool) if out is None else out
  for j, mask_name in enumerate(record.mask_frames):
    if mask_name != name:
      continue
    id_map = raw_io.decode_id_map(record.masks[j], f"{where} ({record.video_id}): mask of "
                                  f"frame {name!r} (#{index})")
    if id_map.shape != mask.shape:
      raise ClipError(f"{where} ({record.video_id}): mask of frame {name!r} is "
                      f"{id_map.shape}, frames are {mask.shape}")
    for obj_id in obj_ids:
      mask |= id_map == obj_id
  return mask


def clean_caption(text: str) -> str:
  """The original's caption clean-up: lower case, single spaces."""
  return " ".join(text.lower().split())


def _anchored(record: raw.VideoRecord, expression: raw.Expression) -> bool:
  return raw.anchor_key(expression.exp_id) in record.meta


def load_masks(sample: sampling.Sample, indices: np.ndarray, where: str
               ) -> tuple[np.ndarray, np.ndarray]:
  """The expression's masks in frames `indices` of a sample's video.

  Returns (T, H, W) bool masks (empty where not annotated) and (T,) bool `annotated`:
  whether each frame has ground truth (a mask entry; for an anchored sample only the
  anchor frame, as in the original's A2D loader).
  """
  record, expression = sample.record, sample.expression
  if _anchored(record, expression):
    annotated = indices == sample.anchor
  else:
    annotated = np.isin(np.asarray(record.frame_names)[indices], record.mask_frames)
  masks = np.zeros((len(indices), record.height, record.width), bool)
  for t in np.flatnonzero(annotated):
    _decode_mask(record, indices[t], expression.obj_ids, where, out=masks[t])
  return masks, annotated


def load_frames(record: raw.VideoRecord, indices: np.ndarray, where: str,
                draft: tuple[int, int] | None = None) -> list[Image.Image]:
  """Frames `indices` of a video as T decoded RGB PIL images (h, w), which transforms
  resample without a numpy round trip; JPEGs decoded at a reduced scale no smaller than
  `draft` (H, W) if given, else (h, w) = (H, W)."""
  return [_decode_frame(record, i, where, draft) for i in indices]


# Training ------------------------------------------------------------------------------------


class _TrainClip(grain.transforms.RandomMap):
  """(Sample, where) -> a padded training example, or None if no valid clip was found."""

  def __init__(self, cfg: DataConfig, tokenize: Tokenize | None):
    self._cfg, self._tokenize = cfg, tokenize

  def random_map(self, element, rng: np.random.Generator):
    sample, where = element
    try:
      return self._example(sample, where, rng)
    except _BAD_INPUT as e:
      if not self._cfg.skip_bad_records:
        raise
      _skip("clips", e)
      return None

  def _clip(self, sample: sampling.Sample, where: str, rng: np.random.Generator):
    """(augmented clip, frame indices, annotated); the clip is None, its frames never
    decoded, when no object box survives the random crop."""
    cfg, record = self._cfg, sample.record
    aug, caption = cfg.augmentation, clean_caption(sample.expression.text)
    geometry = transforms.random_geometry(rng, record.height, record.width, aug)
    if len(record.frame_names) == 1 and cfg.num_frames > 1:
      indices = np.zeros(cfg.num_frames, np.int64)
      annotated = np.ones(cfg.num_frames, bool)
      masks, _ = load_masks(sample, indices[:1], where)
      image = np.asarray(load_frames(record, indices[:1], where)[0])
      clip = transforms.pseudo_video(image, masks[0], caption, rng, cfg.num_frames,
                                     cfg.pseudo_video)
    else:
      reverse = 0.0 if _anchored(record, sample.expression) else cfg.reverse_prob
      indices = sampling.clip_indices(rng, sample.anchor, cfg.num_frames,
                                      len(record.frame_names), reverse, cfg.local_window)
      masks, annotated = load_masks(sample, indices, where)
      boxes, valid = transforms.mask_boxes(masks)
      if not transforms.visible_in(boxes, valid, geometry.region).any():
        return None, indices, annotated
      draft = transforms.draft_size(geometry, record.height, record.width)
      clip = transforms.Clip(load_frames(record, indices, where, draft), masks, boxes, valid,
                             caption)
    return transforms.augment(clip, rng, geometry, aug), indices, annotated

  def _example(self, sample: sampling.Sample, where: str, rng: np.random.Generator):
    for _ in range(self._cfg.max_resample + 1):
      clip, indices, annotated = self._clip(sample, where, rng)
      if clip is not None and clip.valid.any():
        return self._finish(sample, clip, indices, annotated)
      sample = sampling.resample(rng, sample)
    logging.warning("%s: expression %r has no valid clip after %d tries; dropped", where,
                    sample.expression.exp_id, self._cfg.max_resample + 1)
    return None

  def _finish(self, sample, clip: transforms.Clip, indices, annotated) -> dict[str, Any]:
    """The example, frames and masks unpadded: _BucketBatch pads them once per batch."""
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


def _is_example(example) -> bool:
  return example is not None


# Example arrays (T, h, w, ...) that a batch pads to its bucket (H, W).
_PADDED = ("frames", "masks")


@dataclasses.dataclass(frozen=True)
class _BucketBatch:
  """Stacks examples, padding frames and masks to the smallest bucket that holds all of them
  (each copied once, into its slot of the batch), and adds their pad_mask."""
  buckets: tuple[tuple[int, int], ...]

  def __call__(self, examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    sizes = [tuple(e["size"]) for e in examples]
    bucket = transforms.choose_bucket(sizes, self.buckets)
    batch = {key: transforms.pad_batch([e[key] for e in examples], bucket, (1, 2))
             if key in _PADDED else np.array([e[key] for e in examples])
             for key in examples[0]}
    batch["pad_mask"] = np.stack([transforms.padding_mask(s, bucket) for s in sizes])
    return batch


@dataclasses.dataclass(frozen=True)
class _SampleExpansion:
  stride: int

  def __call__(self, record: raw.VideoRecord) -> list[sampling.Sample]:
    return sampling.expand(record, self.stride)


def _prefetch(ds: grain.IterDataset, cfg: DataConfig, units: int | None) -> grain.IterDataset:
  """Runs `ds` in cfg.worker_count processes, but no more than the `units` they split (an
  interleave left without shards fails in grain)."""
  workers = cfg.worker_count if units is None else min(cfg.worker_count, units)
  if workers == 0:
    return ds
  return ds.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=workers, per_worker_buffer_size=cfg.worker_buffer_size))


def make_train_iter(config, process_index: int, process_count: int,
                    tokenize: Tokenize | None = None) -> grain.DatasetIterator:
  """The training batches of one JAX process (module docstring); checkpointable iterator.

  Args:
    config: the experiment ConfigDict (fields in the module docstring).
    process_index, process_count: this process among the JAX processes; each reads its own
      shards (shards.process_shards) and yields batch_size // process_count clips a batch.
    tokenize: optional, picklable `caption -> {name: fixed-shape array}`, added per example.
  """
  cfg = DataConfig.for_train(config, process_count)
  ds, units = _records(cfg, _shard_paths(cfg, process_index, process_count), shuffle=True,
                       num_epochs=cfg.num_epochs)
  ds = grain.experimental.FlatMapIterDataset(
      ds, _Expand(_SampleExpansion(cfg.num_frames), cfg.skip_bad_records))
  ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=cfg.shuffle_window,
                                                   seed=cfg.seed)
  ds = ds.random_map(_TrainClip(cfg, tokenize), seed=cfg.seed).filter(_is_example)
  ds = ds.batch(cfg.batch_size, drop_remainder=True, batch_fn=_BucketBatch(cfg.buckets))
  return iter(_prefetch(ds, cfg, units))


# Evaluation ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Window:
  """Window `window` of `num_windows` of an expression; `anchor` >= 0 for anchored ones."""
  record: raw.VideoRecord
  exp_index: int
  window: int
  num_windows: int
  anchor: int = -1


def window_frames(num_frames: int, window: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Frame indices (length,) of window `window` and their validity; the last window repeats
  the video's last frame, marked invalid."""
  indices = np.arange(window * length, (window + 1) * length)
  return np.minimum(indices, num_frames - 1), indices < num_frames


def centred_frames(anchor: int, length: int, num_frames: int) -> np.ndarray:
  """`length` frame indices centred on `anchor`, clamped to the video (the original's A2D
  evaluation clip: anchor - length // 2 ... anchor + (length + 1) // 2 - 1)."""
  return np.clip(np.arange(anchor - length // 2, anchor + (length + 1) // 2), 0, num_frames - 1)


@dataclasses.dataclass(frozen=True)
class _Windows:
  length: int

  def __call__(self, record: raw.VideoRecord) -> list[_Window]:
    windows = []
    for e, expression in enumerate(record.expressions):
      if _anchored(record, expression) or len(record.frame_names) == 1:
        if self.length < 1:
          raise ValueError("anchored expressions (A2D / JHMDB) and images (RefCOCO) need "
                           "config.eval.preprocessing.window >= 1")
        anchor = sampling.expression_anchors(record, e, 1)[0]
        windows.append(_Window(record, e, 0, 1, anchor))
      else:
        length = self.length or len(record.frame_names)
        count = -(-len(record.frame_names) // length)
        windows.extend(_Window(record, e, w, count) for w in range(count))
    return windows


@dataclasses.dataclass(frozen=True)
class _EvalWindow:
  cfg: DataConfig

  def __call__(self, element) -> dict[str, np.ndarray] | None:
    item, where = element
    try:
      return self._window(item, where)
    except _BAD_INPUT as e:
      if not self.cfg.skip_bad_records:
        raise
      _skip("clips", e)
      return None

  def _window(self, item: _Window, where: str) -> dict[str, np.ndarray]:
    cfg, record = self.cfg, item.record
    num_frames = len(record.frame_names)
    expression = record.expressions[item.exp_index]
    extra = {}
    if item.anchor >= 0:
      indices = centred_frames(item.anchor, cfg.eval_window, num_frames)
      valid = np.ones(len(indices), bool)
      annotated = np.arange(len(indices)) == np.argmax(indices == item.anchor)
      extra["gt_mask"] = _decode_mask(record, item.anchor, expression.obj_ids, where)
    else:
      length = cfg.eval_window or num_frames
      indices, valid = window_frames(num_frames, item.window, length)
      annotated = valid & np.isin(np.asarray(record.frame_names)[indices], record.mask_frames)
    frames = transforms.eval_resize(load_frames(record, indices, where),
                                    cfg.eval_short_side, cfg.eval_max_size)
    size = frames.shape[1:3]
    shape = transforms.pad_multiple(size, cfg.eval_size_divisor)
    example = {
        "frames": transforms.pad_batch([frames], shape, (1, 2))[0],
        "pad_mask": transforms.padding_mask(size, shape),
        "frame_valid": valid,
        "annotated": annotated,
        "frame_indices": indices.astype(np.int32),
        "frame_names": np.where(valid, np.asarray(record.frame_names)[indices], ""),
        "window": np.int32(item.window),
        "num_windows": np.int32(item.num_windows),
        "size": np.array(size, np.int32),
        "orig_size": np.array([record.height, record.width], np.int32),
        "caption": clean_caption(expression.text),
        "video_id": record.video_id,
        "exp_id": expression.exp_id,
        **extra,
    }
    return {k: np.asarray(v)[None] for k, v in example.items()}


def make_eval_iter(config, process_index: int = 0, process_count: int = 1
                   ) -> grain.DatasetIterator:
  """Every (video, expression) of config.eval.split in windows (module docstring), in shard
  order; each process reads its own shards."""
  cfg = DataConfig.for_eval(config)
  ds, units = _records(cfg, _shard_paths(cfg, process_index, process_count), shuffle=False,
                       num_epochs=1)
  ds = grain.experimental.FlatMapIterDataset(ds, _Expand(_Windows(cfg.eval_window),
                                                         cfg.skip_bad_records))
  return iter(_prefetch(ds.map(_EvalWindow(cfg)).filter(_is_example), cfg, units))
