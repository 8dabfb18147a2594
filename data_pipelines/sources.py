"""Built shards as grain datasets: (record bytes, where) pairs, and records expanded into items.

`where` names a record for error messages: "<shard path> record <index>". TFRecord shards
are streamed, a few at a time (`cycle_length`), interleaved, in a shard order shuffled per
epoch; each shard's iterator checkpoints the number of records it has read. ArrayRecord
shards, and the ArrayRecord files of a TFDS dataset (`TfdsSource`, format "tfds"), are read
by record index, shuffled globally per epoch, `cycle_length` records ahead. `Expand` decodes
each record and turns it into the items a pipeline maps (training samples or evaluation
windows).
"""

import dataclasses
from typing import Callable

import grain
import numpy as np

from data_pipelines import bad_input
from data_pipelines import raw
from data_pipelines import records
from data_pipelines import shards

# config.data.format: the project's shards, or a TFDS dataset (tfds_builders.py).
FORMATS = shards.FORMATS + ("tfds",)


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


class TfdsSource:
  """Random access to this process's raw records of TFDS splits, in split and shard order
  (grain data source; records.decode reads them).

  The records of a TFDS shard stay together, and shards go to processes as
  `shards.process_shards` deals out shard files: a TFDS dataset and the project's shards
  built with the same --num_shards give every process the same records in the same order.

  Args:
    data_dir: the TFDS data dir (config.data.tfds_dir).
    dataset, splits: the project's dataset name and the reader's names of its splits.
    process_index, process_count: this process among the JAX processes.
  """

  def __init__(self, data_dir: str, dataset: str, splits: tuple[str, ...], process_index: int,
               process_count: int):
    from data_pipelines import tfds_builders  # Deferred: an optional extra.
    self._sources, self._names, runs = [], [], []
    for k, split in enumerate(splits):
      name, tfds_split = tfds_builders.name_and_split(dataset, split)
      self._sources.append(tfds_builders.raw_data_source(data_dir, dataset, split))
      self._names.append(f"TFDS {name} split {tfds_split} in {data_dir}")
      lengths = self._sources[-1].dataset_info.splits[tfds_split].shard_lengths
      runs.extend((k, end - length, end) for length, end in zip(lengths, np.cumsum(lengths)))
    mine = shards.process_shards(runs, process_index, process_count)
    # (source, record) of each of this process's records.
    self._records = np.array([(k, i) for k, start, end in mine for i in range(start, end)],
                             np.int64).reshape(-1, 2)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> bytes:
    source, record = self._records[index]
    return self._sources[source][int(record)]

  def where(self, index: int) -> str:
    source, record = self._records[index]
    return shards.location(self._names[source], int(record))


@dataclasses.dataclass(frozen=True)
class _ReadRecord:
  source: shards.ArrayRecordSource | TfdsSource

  def __call__(self, index: int) -> tuple[bytes, str]:
    return self.source[index], self.source.where(index)


@dataclasses.dataclass(frozen=True)
class _OpenShard:
  skip_bad: bool

  def __call__(self, path: str) -> grain.IterDataset:
    return TFRecordShard(path, self.skip_bad)


def read_random_access(source: shards.ArrayRecordSource | TfdsSource, *, cycle_length: int,
                       shuffle: bool, seed: int, num_epochs: int | None
                       ) -> tuple[grain.IterDataset, int | None]:
  """(record bytes, where) of a random-access source, record order shuffled per epoch if
  `shuffle`; the arguments and result as `read_records`'s."""
  ds = grain.MapDataset.range(len(source))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  # Records are whole videos (MBs): read a few ahead, not grain's default 500.
  read = grain.ReadOptions(num_threads=cycle_length, prefetch_buffer_size=cycle_length)
  ds = ds.repeat(num_epochs).map(_ReadRecord(source)).to_iter_dataset(read)
  return ds, None if num_epochs is None else len(source) * num_epochs


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
    return read_random_access(shards.ArrayRecordSource(paths), cycle_length=cycle_length,
                              shuffle=shuffle, seed=seed, num_epochs=num_epochs)
  ds = grain.MapDataset.source(paths)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs).map(_OpenShard(skip_bad))
  cycle = min(cycle_length, len(paths)) if shuffle else 1
  ds = grain.experimental.InterleaveIterDataset(ds, cycle_length=cycle)
  return ds, None if num_epochs is None else len(paths) * num_epochs


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
