"""The grain train and eval pipelines over built shards (TFRecord, ArrayRecord or TFDS).

`make_train_iter` and `make_eval_iter` compose the stages; each stage is built from its own
part of the config, every field declared once, with its meaning, in configs/common.py
(sub-dicts are the keyword arguments of the class named next to them):

  stage                              module        config
  shards -> (record bytes, where)    sources       data.{shards_dir or tfds_dir,
                                                   subsets, format, cycle_length,
                                                   skip_bad_records},
                                                   seed; training: data.num_epochs
  record -> samples -> frame indices sampling      data.sampling (ClipSampling)
  samples shuffled in a window       here          data.shuffle_window
  sample -> training example         train_clips   data.augmentation (transforms.
                                                   Augmentation), data.pseudo_video
                                                   (transforms.PseudoVideo),
                                                   data.max_resample
  examples -> batch                  batching      data.{buckets, batch_size}
  record -> eval windows -> element  eval_windows  eval.preprocessing (Preprocessing)
  caption -> token arrays            `tokenize`    data.text (vdit_jax.tokenizers.
                                                   CaptionTokenizer)
  worker processes                   here          data.{worker_count, worker_buffer_size}

An epoch, the unit of config.schedule, is `steps_per_epoch` updates: the training samples
(`train_sample_count`, counted from what the build recorded, no record read) over the global
batch.

Train batches (B = per-process batch, T = num_frames, (H, W) the smallest bucket that holds
every clip of the batch): the training example of train_clips, stacked, frames and masks
padded to (H, W), plus pad_mask (B, H, W) bool, True on padding. Eval elements: one window
of one (video, expression) with a batch axis of 1 (eval_windows).

Frames are uint8 RGB, 0 on padding: the model makes its inputs from them on the device with
config.data.mean / std (vdit_jax.models.normalize.backbone_frames, which gives padding the
value the original's collate and de-normalisation give it), a quarter of the bytes of
float32 frames to make here and to copy to the device.

Determinism: every random choice comes from grain's `random_map` generator, seeded from
(seed, element index); shuffles from `seed`. `iterator.get_state()` / `set_state()` restore a
pipeline mid-epoch to the same next batch.

Bad input: a corrupt record, frame or mask raises an error naming the shard, record and
frame; with skip_bad_records it is skipped, counted (bad_input.skipped_counts(), per decoding
process) and logged. A truncated or CRC-failing TFRecord ends that shard.
"""

import os

import grain

from data_pipelines import batching
from data_pipelines import decoding
from data_pipelines import eval_windows
from data_pipelines import sampling
from data_pipelines import shards
from data_pipelines import sources
from data_pipelines import train_clips
from data_pipelines import transforms
from vdit_jax import errors


def _splits(data, split: str) -> tuple[str, ...]:
  """The reader's split names of `split` (of every subset, for RefCOCO)."""
  if data.format not in sources.FORMATS:
    raise errors.ConfigError(f"config.data.format {data.format!r} is not one of "
                             f"{sources.FORMATS}")
  return tuple(f"{s}/{split}" for s in data.subsets) or (split,)


def _records(config, split: str, process_index: int, process_count: int, shuffle: bool,
             num_epochs: int | None) -> tuple[grain.IterDataset, int | None]:
  """This process's (record bytes, where) of `split` (of every subset, for RefCOCO)."""
  data = config.data
  splits = _splits(data, split)
  if data.format == "tfds":
    source = sources.TfdsSource(data.tfds_dir, data.dataset, splits, process_index,
                                process_count)
    return sources.read_random_access(source, cycle_length=data.cycle_length, shuffle=shuffle,
                                      seed=config.seed, num_epochs=num_epochs)
  paths = sources.shard_paths(data.shards_dir, splits, process_index, process_count)
  return sources.read_records(paths, format=data.format, cycle_length=data.cycle_length,
                              skip_bad=data.skip_bad_records, shuffle=shuffle,
                              seed=config.seed, num_epochs=num_epochs)


def _prefetch(ds: grain.IterDataset, data, units: int | None) -> grain.IterDataset:
  """Runs `ds` in data.worker_count processes, but no more than the `units` they split (an
  interleave left without shards fails in grain)."""
  workers = data.worker_count if units is None else min(data.worker_count, units)
  if workers == 0:
    return ds
  return ds.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=workers, per_worker_buffer_size=data.worker_buffer_size))


def _is_example(example) -> bool:
  return example is not None


def make_train_iter(config, process_index: int, process_count: int,
                    tokenize: decoding.Tokenize | None = None) -> grain.DatasetIterator:
  """The training batches of one JAX process (module docstring); checkpointable iterator.

  Args:
    config: the experiment ConfigDict (configs/common.py).
    process_index, process_count: this process among the JAX processes; each reads its own
      shards (shards.process_shards) and yields batch_size // process_count clips a batch.
    tokenize: optional, picklable `caption -> {name: fixed-shape array}`, added per example
      (vdit_jax.tokenizers.CaptionTokenizer).
  """
  data = config.data
  if data.batch_size % process_count:
    raise errors.ConfigError(f"config.data.batch_size {data.batch_size} is not divisible by "
                             f"{process_count} processes")
  batch_size = data.batch_size // process_count
  clip_sampling = sampling.ClipSampling(**data.sampling)
  augmentation = transforms.Augmentation(**data.augmentation)
  buckets = tuple(tuple(b) for b in data.buckets)
  batching.check_buckets(buckets, augmentation, batch_size)
  clips = train_clips.TrainClip(
      clip_sampling=clip_sampling, augmentation=augmentation,
      pseudo_video=transforms.PseudoVideo(**data.pseudo_video),
      max_resample=data.max_resample, skip_bad=data.skip_bad_records, tokenize=tokenize)
  ds, units = _records(config, data.split, process_index, process_count, shuffle=True,
                       num_epochs=data.num_epochs)
  ds = grain.experimental.FlatMapIterDataset(
      ds, sources.Expand(clip_sampling.samples, data.skip_bad_records))
  ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=data.shuffle_window,
                                                   seed=config.seed)
  ds = ds.random_map(clips, seed=config.seed).filter(_is_example)
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=batching.BucketBatch(buckets))
  return iter(_prefetch(ds, data, units))


def make_eval_iter(config, process_index: int = 0, process_count: int = 1,
                   tokenize: decoding.Tokenize | None = None) -> grain.DatasetIterator:
  """Every (video, expression) of config.eval.split in windows (eval_windows), in shard
  order; each process reads its own shards; `tokenize` as in make_train_iter."""
  preprocessing = eval_windows.Preprocessing(**config.eval.preprocessing)
  skip_bad = config.data.skip_bad_records
  ds, units = _records(config, config.eval.split, process_index, process_count, shuffle=False,
                       num_epochs=1)
  ds = grain.experimental.FlatMapIterDataset(ds, sources.Expand(preprocessing.windows,
                                                                skip_bad))
  ds = ds.map(eval_windows.EvalWindow(preprocessing, skip_bad, tokenize)).filter(_is_example)
  return iter(_prefetch(ds, config.data, units))


def _anchor_counts(data, split: str) -> sampling.AnchorCounts:
  """The AnchorCounts the build recorded for a reader's split."""
  if data.format == "tfds":
    from data_pipelines import tfds_builders  # Deferred: an optional extra.
    return tfds_builders.anchor_counts(data.tfds_dir, data.dataset, split)
  info = shards.read_current_info(data.shards_dir, split)
  where = (f"{os.path.join(shards.split_dir(data.shards_dir, split), shards.INFO_FILE)} "
           f"expressions_by_anchor_frames")
  return sampling.AnchorCounts.from_json(info.get("expressions_by_anchor_frames"), where)


def train_sample_count(config) -> int:
  """How many training samples (sampling.ClipSampling.samples over every record) an epoch of
  config.data.split holds (RefCOCO: of every subset), at config.data.sampling.num_frames;
  from what the build recorded, without reading a record."""
  data = config.data
  counts = sum((_anchor_counts(data, split) for split in _splits(data, data.split)),
               sampling.AnchorCounts())
  return sampling.ClipSampling(**data.sampling).sample_count(counts)


def steps_per_epoch(config) -> int:
  """The updates of an epoch: train_sample_count // config.data.batch_size (the global
  batch), the unit of config.schedule's epochs; an epoch without a step is a ConfigError."""
  data = config.data
  samples = train_sample_count(config)
  if samples < data.batch_size:
    raise errors.ConfigError(
        f"config.data.batch_size {data.batch_size} exceeds the {samples} training samples of "
        f"{data.dataset} {data.split} (at config.data.sampling.num_frames="
        f"{data.sampling.num_frames}): an epoch would have no step")
  return samples // data.batch_size


def eval_video_count(config, process_index: int = 0, process_count: int = 1) -> int:
  """How many records (videos; RefCOCO: images) make_eval_iter reads on this process."""
  data = config.data
  splits = _splits(data, config.eval.split)
  if data.format == "tfds":
    return len(sources.TfdsSource(data.tfds_dir, data.dataset, splits, process_index,
                                  process_count))
  counts = {path: n for split in splits
            for path, n in shards.num_records(data.shards_dir, split).items()}
  return sum(counts[path]
             for path in shards.process_shards(list(counts), process_index, process_count))
