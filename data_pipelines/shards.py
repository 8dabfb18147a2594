"""Shard files of serialised records: TFRecord and ArrayRecord writing, reading and checking.

Layout of a built split (see `build.py`), `<dir>/<split>/` (a split such as "refcoco+/val"
nests one level deeper):

  shard-00000-of-00004.tfrecord       (or .array_record)
  ...
  dataset_info.json

dataset_info.json: {"info_version", "dataset", "split", "format", "record_version",
"num_videos", "num_expressions", "num_frames", "num_skipped", "skipped": [{"video_id",
"error"}], "expressions_by_anchor_frames": sampling.AnchorCounts.to_json() (what counting the
training samples for any clip length needs), "feature_spec": records.feature_spec_json(),
"shards": [{"file", "num_records", "sha256"}]}. "info_version" is INFO_VERSION; files without
it (version 1) predate "expressions_by_anchor_frames".

TFRecord framing, per record: uint64 length (little-endian), masked crc32c of those 8 bytes
(uint32 LE), the record bytes, masked crc32c of the record bytes (uint32 LE); the mask is
TensorFlow's: rotate right by 15 bits, add 0xa282ead8. ArrayRecord shards hold the same record
bytes, written with "group_size:1" for cheap random access.
"""

import bisect
import dataclasses
import glob
import hashlib
import itertools
import json
import os
import struct
from typing import Iterator

import crc32c
from array_record.python import array_record_data_source
from array_record.python import array_record_module

from vdit_jax import errors

FORMATS = ("tfrecord", "array_record")
INFO_FILE = "dataset_info.json"
INFO_VERSION = 2

_CRC_MASK_DELTA = 0xA282EAD8
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


class ShardError(errors.UserError, ValueError):
  """A shard that is truncated, corrupt, missing or does not match dataset_info.json."""


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC-32C of `data`."""
  crc = crc32c.crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def location(path: str, index: int) -> str:
  """How errors name record `index` of shard `path` (pass it as records.decode's `where`)."""
  return f"{path} record {index}"


def shard_name(index: int, num_shards: int, fmt: str) -> str:
  return f"shard-{index:05d}-of-{num_shards:05d}.{fmt}"


def split_dir(root: str, split: str) -> str:
  return os.path.join(root, split)


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  """What dataset_info.json records of one shard."""
  file: str
  num_records: int
  sha256: str


class ShardWriter:
  """Writes records (bytes) into one shard file of either format.

  with ShardWriter(path, "tfrecord") as writer:
    writer.write(records.encode(video))
  writer.info  # ShardInfo, once closed
  """

  def __init__(self, path: str, fmt: str):
    if fmt not in FORMATS:
      raise ValueError(f"unknown shard format {fmt!r}, expected one of {FORMATS}")
    self.path, self.format = path, fmt
    self.num_records = 0
    self.info = None
    if fmt == "tfrecord":
      self._file = open(path, "wb")
    else:
      self._file = array_record_module.ArrayRecordWriter(path, "group_size:1")

  def write(self, data: bytes) -> None:
    if self.format == "tfrecord":
      length = _LENGTH.pack(len(data))
      self._file.write(length + _CRC.pack(masked_crc32c(length)))
      self._file.write(data)
      self._file.write(_CRC.pack(masked_crc32c(data)))
    else:
      self._file.write(data)
    self.num_records += 1

  def close(self) -> ShardInfo:
    if self.info is None:
      self._file.close()
      self.info = ShardInfo(os.path.basename(self.path), self.num_records,
                            file_sha256(self.path))
    return self.info

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _read_exactly(f, size: int, path: str, index: int, what: str) -> bytes:
  data = f.read(size)
  if len(data) != size:
    raise ShardError(f"{location(path, index)}: truncated {what} ({len(data)} of {size} bytes)")
  return data


def _check_crc(data: bytes, crc: bytes, path: str, index: int, what: str) -> None:
  if _CRC.unpack(crc)[0] != masked_crc32c(data):
    raise ShardError(f"{location(path, index)}: {what} CRC mismatch (corrupt shard)")


def read_tfrecord(path: str, *, verify_crc: bool = True, start: int = 0) -> Iterator[bytes]:
  """Yields the records of a TFRecord shard from record `start` on; a truncated record or a
  bad CRC raises ShardError. Records before `start` are stepped over by their checked length
  headers, their data unread (a restored iterator resumes without re-reading the shard)."""
  with open(path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
    for index in itertools.count():
      if f.tell() == size:
        return
      header = _read_exactly(f, _LENGTH.size, path, index, "length")
      length_crc = _read_exactly(f, _CRC.size, path, index, "length CRC")
      if verify_crc:
        _check_crc(header, length_crc, path, index, "length")
      length = _LENGTH.unpack(header)[0]
      if length > size - f.tell():  # checked first: an unchecked bad length can be huge
        raise ShardError(f"{location(path, index)}: truncated record (needs {length} bytes, "
                         f"{size - f.tell()} left)")
      if index < start:
        f.seek(length, os.SEEK_CUR)
        _read_exactly(f, _CRC.size, path, index, "record CRC")
        continue
      data = f.read(length)
      data_crc = _read_exactly(f, _CRC.size, path, index, "record CRC")
      if verify_crc:
        _check_crc(data, data_crc, path, index, "record")
      yield data


def _num_array_records(path: str) -> int:
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()


class ArrayRecordSource:
  """Random access to the records of ArrayRecord shards, in shard order (grain data source).

  Picklable for grain workers: files are (re)opened lazily in each process.
  """

  def __init__(self, paths: list[str]):
    self.paths = list(paths)
    self._source = array_record_data_source.ArrayRecordDataSource(self.paths)
    self._ends = list(itertools.accumulate(_num_array_records(p) for p in self.paths))

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> bytes:
    return self._source[index]

  def __iter__(self) -> Iterator[bytes]:
    return iter(self._source)

  def __getitems__(self, indices) -> list[bytes]:
    return list(self._source.__getitems__(indices))

  def where(self, index: int) -> str:
    """The shard and in-shard index of global record `index`, as errors name it."""
    shard = bisect.bisect_right(self._ends, index)
    start = self._ends[shard - 1] if shard else 0
    return location(self.paths[shard], index - start)


def write_info(directory: str, info: dict) -> None:
  with open(os.path.join(directory, INFO_FILE), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1, sort_keys=True)
    f.write("\n")


def read_info(directory: str) -> dict:
  path = os.path.join(directory, INFO_FILE)
  if not os.path.exists(path):
    raise ShardError(f"{path} does not exist: not a built split directory")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_current_info(root: str, split: str) -> dict:
  """dataset_info.json of `split` under `root`, which must be of INFO_VERSION; an older one
  raises ShardError naming the command that rebuilds it."""
  directory = split_dir(root, split)
  info = read_info(directory)
  version = info.get("info_version", 1)
  if version != INFO_VERSION:
    raise ShardError(
        f"{os.path.join(directory, INFO_FILE)} is of version {version}, this code reads "
        f"version {INFO_VERSION}; rebuild the split with python -m data_pipelines.build "
        f"--dataset {info.get('dataset', 'DATASET')} --raw RAW --split {split} --out {root} "
        f"--format {info.get('format', 'FORMAT')} --overwrite")
  return info


def _shard_paths(directory: str) -> list[tuple[str, dict]]:
  """(path, entry) of each shard dataset_info.json lists, in order; a missing shard raises."""
  entries = read_info(directory)["shards"]
  paths = [os.path.join(directory, s["file"]) for s in entries]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise ShardError(f"{directory}: shard(s) listed in {INFO_FILE} are missing: {missing}")
  return list(zip(paths, entries))


def list_shards(root: str, split: str) -> list[str]:
  """The shard paths of `split` under `root` in order, as dataset_info.json lists them."""
  return [path for path, _ in _shard_paths(split_dir(root, split))]


def num_records(root: str, split: str) -> dict[str, int]:
  """{shard path: records} of `split` under `root`, as dataset_info.json lists them."""
  return {path: int(entry["num_records"]) for path, entry in _shard_paths(split_dir(root, split))}


def verify(root: str) -> list[str]:
  """Re-checks every shard's sha256 of every split under `root`; returns the split dirs."""
  infos = sorted(glob.glob(os.path.join(root, "**", INFO_FILE), recursive=True))
  if not infos:
    raise ShardError(f"{root}: no {INFO_FILE} found")
  directories = [os.path.dirname(p) for p in infos]
  for directory in directories:
    for path, entry in _shard_paths(directory):
      if file_sha256(path) != entry["sha256"]:
        raise ShardError(f"{path}: sha256 differs from {INFO_FILE} (modified or corrupt)")
  return directories


def process_shards(shards: list[str], process_index: int, process_count: int) -> list[str]:
  """The shards process `process_index` of `process_count` reads (round-robin).

  The subsets are disjoint and together cover `shards`; every process gets at least one.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if len(shards) < process_count:
    raise ShardError(f"{len(shards)} shards cannot feed {process_count} processes: rebuild with "
                     f"--num_shards >= {process_count}")
  return list(shards[process_index::process_count])
