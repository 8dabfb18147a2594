"""Built shards as grain datasets: (record bytes, where) pairs, and records expanded into items.

`where` names a record for error messages: "<shard path> record <index>". TFRecord shards
are streamed, a few at a time (`cycle_length`), interleaved, in a shard order shuffled per
epoch; each shard's iterator checkpoints the number of records it has read. ArrayRecord
shards are read by record index, shuffled globally per epoch, `cycle_length` records ahead.
`Expand` decodes each record and turns it into the items a pipeline maps (training samples
or evaluation windows).
"""

import dataclasses
from typing import Callable

import grain

from data_pipelines import bad_input
from data_pipelines import raw
from data_pipelines import records
from data_pipelines import shards


def shard_paths(shards_dir: str, splits: tuple[str, ...], process_index: int,
                process_count: int) -> list[str]:
  """This process's shards of every split directory <shards_dir>/<split>."""
  paths = [p for split in splits for p in shards.list_shards(shards_dir, split)]
  return shards.process_shards(paths, process_index, process_count)


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
      bad_input.skip("shards", e)
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


class TFRecordShard(grain.IterDataset):
  """One TFRecord shard's (record bytes, where); a truncated or CRC-failing record ends the
  shard with a ShardError, or (skip_bad) counted and logged."""

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
    return TFRecordShard(path, self.skip_bad)


def read_records(paths: list[str], *, format: str, cycle_length: int, skip_bad: bool,
                 shuffle: bool, seed: int, num_epochs: int | None
                 ) -> tuple[grain.IterDataset, int | None]:
  """(record bytes, where) pairs of `paths`, video order shuffled per epoch if `shuffle`.

  Args:
    paths: shard files, all of `format` ("tfrecord" or "array_record").
    format, cycle_length, skip_bad: config.data.format, cycle_length, skip_bad_records.
    shuffle, seed: shuffle the order (TFRecord: of shards, interleaved; ArrayRecord: of
      records) per epoch, from `seed`.
    num_epochs: passes over the shards; None repeats forever.

  Returns:
    The dataset, and how many units (TFRecord shards, ArrayRecord records) grain workers
    split between them, None if unbounded.
  """
  if format == "array_record":
    source = shards.ArrayRecordSource(paths)
    ds = grain.MapDataset.range(len(source))
    if shuffle:
      ds = ds.shuffle(seed=seed)
    # Records are whole videos (MBs): read a few ahead, not grain's default 500.
    read = grain.ReadOptions(num_threads=cycle_length, prefetch_buffer_size=cycle_length)
    ds = ds.repeat(num_epochs).map(_ArrayRecordReader(source)).to_iter_dataset(read)
    units = len(source)
  else:
    ds = grain.MapDataset.source(paths)
    if shuffle:
      ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs).map(_OpenShard(skip_bad))
    cycle = min(cycle_length, len(paths)) if shuffle else 1
    ds = grain.experimental.InterleaveIterDataset(ds, cycle_length=cycle)
    units = len(paths)
  return ds, None if num_epochs is None else units * num_epochs


class Expand(grain.experimental.FlatMapTransform):
  """(record bytes, where) -> items(record), each as (item, where); a bad record is skipped
  (counted as "records") if `skip_bad`."""

  max_fan_out = 1 << 20

  def __init__(self, items: Callable[[raw.VideoRecord], list], skip_bad: bool):
    self._items, self._skip_bad = items, skip_bad

  def flat_map(self, element):
    data, where = element
    items = bad_input.call_or_skip("records", self._skip_bad, self._decode, data, where)
    return [(item, where) for item in items or ()]

  def _decode(self, data: bytes, where: str) -> list:
    return self._items(records.decode(data, where=where))
