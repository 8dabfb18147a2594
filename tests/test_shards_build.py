"""Shard writing/reading (TFRecord framing and CRCs, ArrayRecord) and the build CLI."""

import hashlib
import io
import logging
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import tfrecord
from array_record.python import array_record_module
from PIL import Image

from data_pipelines import build
from data_pipelines import raw
from data_pipelines import readers
from data_pipelines import records
from data_pipelines import shards
from data_pipelines import synthetic
from data_pipelines import ytvos


def _video(index: int) -> raw.VideoRecord:
  """A small record whose frames differ in size from video to video."""
  rng = np.random.default_rng(index)
  height, width = 8 + index, 10 + 2 * index
  frames = []
  for _ in range(2 + index % 3):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(buffer, "JPEG")
    frames.append(buffer.getvalue())
  id_map = np.zeros((height, width), np.uint8)
  id_map[1:4, 2:6] = index + 1
  buffer = io.BytesIO()
  Image.fromarray(id_map, mode="L").save(buffer, "PNG")
  names = tuple(f"{5 * i:05d}" for i in range(len(frames)))
  return raw.VideoRecord(
      dataset="davis", split="train", video_id=f"video{index:02d}", frame_names=names,
      frames=tuple(frames), frame_format="jpeg", height=height, width=width,
      mask_frames=names[:1], masks=(buffer.getvalue(),),
      expressions=(raw.Expression("0", f"object number {index}", (index + 1,)),))


@pytest.fixture(scope="module")
def encoded():
  return [records.encode(_video(i)) for i in range(7)]


def _write(directory, fmt, data, num_shards=2):
  """Writes `data` into `num_shards` shards (contiguous runs); returns their paths."""
  paths = []
  bounds = [k * len(data) // num_shards for k in range(num_shards + 1)]
  for k in range(num_shards):
    path = os.path.join(directory, shards.shard_name(k, num_shards, fmt))
    with shards.ShardWriter(path, fmt) as writer:
      for item in data[bounds[k]:bounds[k + 1]]:
        writer.write(item)
    assert writer.info.num_records == bounds[k + 1] - bounds[k]
    paths.append(path)
  return paths


@pytest.fixture(scope="module")
def tfrecord_paths(tmp_path_factory, encoded):
  return _write(str(tmp_path_factory.mktemp("tfrecord")), "tfrecord", encoded)


def _tf_framed(data: bytes) -> bytes:
  """TFRecord framing with the tfrecord package's own masked CRC (independent reference)."""
  length = struct.pack("<Q", len(data))
  crc = tfrecord.TFRecordWriter.masked_crc
  return length + crc(length) + data + crc(data)


def test_tfrecord_bytes_match_the_tfrecord_package_framing(tfrecord_paths, encoded):
  expected = [b"".join(_tf_framed(d) for d in encoded[:3]),
              b"".join(_tf_framed(d) for d in encoded[3:])]
  for path, want in zip(tfrecord_paths, expected):
    with open(path, "rb") as f:
      assert f.read() == want


def test_tfrecord_package_reads_our_shards(tfrecord_paths, encoded):
  got = [bytes(r) for p in tfrecord_paths for r in tfrecord.tfrecord_iterator(p)]
  assert got == encoded
  parsed = [e for p in tfrecord_paths for e in tfrecord.example_loader(
      p, None, {"video_id": "byte", "height": "int", "exp_obj_ids": "int"})]
  assert [e["video_id"].decode() for e in parsed] == [f"video{i:02d}" for i in range(7)]
  assert [int(e["height"][0]) for e in parsed] == [8 + i for i in range(7)]
  assert [e["exp_obj_ids"].tolist() for e in parsed] == [[i + 1] for i in range(7)]


def test_read_tfrecord_round_trip_and_decode(tfrecord_paths, encoded):
  got = [r for p in tfrecord_paths for r in shards.read_tfrecord(p)]
  assert got == encoded
  assert records.decode(got[4], where=shards.location(tfrecord_paths[1], 1)) == _video(4)


def test_tf_data_reads_our_shards(tfrecord_paths, encoded):
  tf = pytest.importorskip("tensorflow")
  got = [r.numpy() for r in tf.data.TFRecordDataset(tfrecord_paths)]  # checks the CRCs
  assert got == encoded


def test_array_record_holds_the_same_records(tmp_path, tfrecord_paths, encoded):
  paths = _write(str(tmp_path), "array_record", encoded)
  direct = []
  for path in paths:
    reader = array_record_module.ArrayRecordReader(path)
    direct.extend(reader.read_all())
    reader.close()
  from_tfrecord = [r for p in tfrecord_paths for r in shards.read_tfrecord(p)]
  assert direct == from_tfrecord == encoded
  source = pickle.loads(pickle.dumps(shards.ArrayRecordSource(paths)))
  assert len(source) == 7
  assert [source[i] for i in (6, 0, 3)] == [encoded[6], encoded[0], encoded[3]]
  assert source.__getitems__([5, 1]) == [encoded[5], encoded[1]]
  assert source.where(2) == shards.location(paths[0], 2)
  assert source.where(3) == shards.location(paths[1], 0)


def _corrupt_copy(tmp_path, source, edit):
  with open(source, "rb") as f:
    data = bytearray(f.read())
  edit(data)
  path = str(tmp_path / os.path.basename(source))
  with open(path, "wb") as f:
    f.write(data)
  return path


def _offset(encoded, index):
  """Byte offset of record `index` of the first shard."""
  return sum(16 + len(d) for d in encoded[:index])


@pytest.mark.parametrize("record, at, what", [
    (2, 4, "length"), (2, 9, "length CRC"), (2, 12 + 30, "record"), (1, 12 + 30, "record"),
    (2, -3, "record CRC"),
])
def test_truncated_shard_names_path_and_record(tmp_path, tfrecord_paths, encoded, record, at,
                                               what):
  end = _offset(encoded, record) + at if at >= 0 else _offset(encoded, 3) + at
  path = _corrupt_copy(tmp_path, tfrecord_paths[0], lambda d: d.__delitem__(slice(end, None)))
  with pytest.raises(shards.ShardError, match=f": truncated {what} ") as error:
    list(shards.read_tfrecord(path))
  assert str(error.value).startswith(shards.location(path, record) + ":")


def test_flipped_byte_fails_the_crc(tmp_path, tfrecord_paths, encoded):
  def flip(at):
    return lambda d: d.__setitem__(at, d[at] ^ 0x20)

  in_record = _corrupt_copy(tmp_path, tfrecord_paths[0], flip(_offset(encoded, 1) + 12 + 30))
  with pytest.raises(shards.ShardError, match="record CRC mismatch") as error:
    list(shards.read_tfrecord(in_record))
  assert str(error.value).startswith(shards.location(in_record, 1) + ":")
  # The check is ours: without it the corrupted bytes come through.
  unchecked = list(shards.read_tfrecord(in_record, verify_crc=False))
  assert unchecked[1] != encoded[1] and unchecked[2] == encoded[2]

  in_length = _corrupt_copy(tmp_path, tfrecord_paths[0], flip(_offset(encoded, 2)))
  with pytest.raises(shards.ShardError, match="length CRC mismatch") as error:
    list(shards.read_tfrecord(in_length))
  assert str(error.value).startswith(shards.location(in_length, 2) + ":")
  # Unchecked, a length whose top byte is flipped reads as past the end of the file.
  top_byte = _corrupt_copy(tmp_path, tfrecord_paths[0], flip(_offset(encoded, 2) + 7))
  with pytest.raises(shards.ShardError, match="truncated record") as error:
    list(shards.read_tfrecord(top_byte, verify_crc=False))
  assert str(error.value).startswith(shards.location(top_byte, 2) + ":")


def test_read_tfrecord_from_a_start_record_steps_over_the_data_before_it(
    tmp_path, tfrecord_paths, encoded):
  path = tfrecord_paths[0]
  whole = list(shards.read_tfrecord(path))
  for start in range(len(whole) + 1):
    assert list(shards.read_tfrecord(path, start=start)) == whole[start:]
  # Record 1's data is not read when starting at 2, so its flipped byte goes unnoticed; from
  # 1 on, its CRC catches it. A truncated record before the start is still reported.
  flipped = _corrupt_copy(tmp_path, path, lambda d: d.__setitem__(
      _offset(encoded, 1) + 12 + 30, d[_offset(encoded, 1) + 12 + 30] ^ 0x20))
  assert list(shards.read_tfrecord(flipped, start=2)) == whole[2:]
  with pytest.raises(shards.ShardError, match="record CRC mismatch"):
    list(shards.read_tfrecord(flipped, start=1))
  cut = _corrupt_copy(tmp_path, path, lambda d: d.__delitem__(
      slice(_offset(encoded, 1) + 12 + 30, None)))
  with pytest.raises(shards.ShardError, match="truncated record") as error:
    list(shards.read_tfrecord(cut, start=2))
  assert str(error.value).startswith(shards.location(cut, 1) + ":")


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_process_shards_are_disjoint_and_cover(count):
  names = [f"s{i}" for i in range(11)]
  parts = [shards.process_shards(names, i, count) for i in range(count)]
  assert sorted(n for part in parts for n in part) == sorted(names)
  assert sum(len(part) for part in parts) == len(names)
  assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_process_shards_rejects_bad_arguments():
  with pytest.raises(ValueError, match="process_index 2 not in"):
    shards.process_shards(["a", "b", "c"], 2, 2)
  # Too few shards is the user's to fix (a rebuild): a ShardError, which commands print
  # without a traceback (vdit_jax/errors.py).
  with pytest.raises(shards.ShardError, match="2 shards cannot feed 3 processes"):
    shards.process_shards(["a", "b"], 0, 3)


# --- build: synthetic raw datasets -> shards --------------------------------------------------

_SPLITS = [("ytvos", "train"), ("ytvos", "valid"), ("davis", "valid"), ("a2d", "train"),
           ("jhmdb", "test"), ("refcoco", "refcoco+/val")]


@pytest.fixture(scope="module")
def raw_roots(tmp_path_factory):
  roots = {}
  for dataset in synthetic.DATASETS:
    roots[dataset] = str(tmp_path_factory.mktemp(f"raw_{dataset}"))
    synthetic.write(dataset, roots[dataset], num_videos=3, num_frames=5, seed=1)
  return roots


def _reader_records(dataset, root, split):
  reader = readers.get_reader(dataset)
  return [reader.read_video(root, split, v) for v in sorted(reader.list_videos(root, split))]


def _shard_records(out, split):
  return [records.decode(data, where=shards.location(path, i))
          for path in shards.list_shards(out, split)
          for i, data in enumerate(shards.read_tfrecord(path))]


def _files(directory):
  result = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      result[name] = f.read()
  return result


@pytest.mark.parametrize("dataset, split", _SPLITS)
def test_build_holds_what_the_reader_reads(tmp_path, raw_roots, dataset, split):
  out = str(tmp_path / "out")
  info = build.build(dataset, raw_roots[dataset], split, out, num_shards=2)
  expected = _reader_records(dataset, raw_roots[dataset], split)
  assert _shard_records(out, split) == expected
  assert (info["num_videos"], info["num_expressions"], info["num_frames"], info["num_skipped"]) \
      == (len(expected), sum(len(r.expressions) for r in expected),
          sum(len(r.frames) for r in expected), 0)
  assert shards.read_info(os.path.join(out, split)) == info
  files = _files(os.path.join(out, split))
  for shard in info["shards"]:
    assert hashlib.sha256(files[shard["file"]]).hexdigest() == shard["sha256"]
  assert sorted(files) == sorted([shards.INFO_FILE] + [s["file"] for s in info["shards"]])
  assert shards.verify(out) == [os.path.join(out, split)]


def test_workers_and_formats_write_the_same_bytes(tmp_path):
  raw_root = str(tmp_path / "raw")
  synthetic.write("davis", raw_root, num_videos=7, num_frames=3, seed=2)
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  build.build("davis", raw_root, "train", one, num_shards=3, workers=1)
  cli = subprocess.run([sys.executable, "-m", "data_pipelines.build", "--dataset", "davis",
                        "--raw", raw_root, "--split", "train", "--out", two, "--num_shards", "3",
                        "--workers", "2"], capture_output=True, text=True, timeout=120)
  assert cli.returncode == 0, cli.stderr
  assert _files(os.path.join(one, "train")) == _files(os.path.join(two, "train"))

  build.build("davis", raw_root, "train", str(tmp_path / "ar"), num_shards=3,
              fmt="array_record")
  ar_paths = shards.list_shards(str(tmp_path / "ar"), "train")
  tf_paths = shards.list_shards(one, "train")
  assert [len(list(shards.read_tfrecord(p))) for p in tf_paths] == [2, 2, 3]
  assert list(shards.ArrayRecordSource(ar_paths)) == [
      r for p in tf_paths for r in shards.read_tfrecord(p)]


def test_no_silent_overwrite(tmp_path, raw_roots, capsys):
  out = str(tmp_path / "out")
  target = os.path.join(out, "test")
  args = ["--dataset", "jhmdb", "--raw", raw_roots["jhmdb"], "--split", "test", "--out", out]
  assert build.main(args + ["--num_shards", "2"]) == 0
  before = _files(target)
  refusal = re.escape(f"{target} already exists; pass --overwrite")
  with pytest.raises(build.BuildError, match=refusal):
    build.build("jhmdb", raw_roots["jhmdb"], "test", out, num_shards=1)
  capsys.readouterr()
  assert build.main(args) == 1
  assert capsys.readouterr().err == (f"error: {target} already exists; pass --overwrite to "
                                     "replace it\n")
  assert _files(target) == before
  assert build.main(args + ["--num_shards", "1", "--overwrite"]) == 0
  after = _files(target)
  assert sorted(after) == [shards.INFO_FILE, "shard-00000-of-00001.tfrecord"]
  assert after["shard-00000-of-00001.tfrecord"] == b"".join(
      before[f"shard-0000{k}-of-00002.tfrecord"] for k in range(2))
  assert os.listdir(out) == ["test"]  # no temporary directory left behind


def test_bad_video_fails_the_build_or_is_skipped(tmp_path, raw_roots, caplog):
  raw_root = str(tmp_path / "raw")
  shutil.copytree(raw_roots["ytvos"], raw_root)
  video_ids = ytvos.list_videos(raw_root, "train")
  frames_dir = os.path.join(raw_root, "train", "JPEGImages", video_ids[1])
  bad_frame = os.path.join(frames_dir, sorted(os.listdir(frames_dir))[2])
  with open(bad_frame, "r+b") as f:
    f.truncate(100)
  out = str(tmp_path / "out")
  failure = f"video '{video_ids[1]}' failed: .*{re.escape(bad_frame)}"
  with pytest.raises(build.BuildError, match=failure):
    build.build("ytvos", raw_root, "train", out, num_shards=1)
  assert not os.path.exists(out) or os.listdir(out) == []

  with caplog.at_level(logging.WARNING, logger=build.__name__):
    info = build.build("ytvos", raw_root, "train", out, num_shards=1, skip_bad_records=True)
  assert f"skipping video '{video_ids[1]}'" in caplog.text
  assert info["num_videos"] == 2 and info["num_skipped"] == 1
  assert info["skipped"][0]["video_id"] == video_ids[1]
  assert bad_frame in info["skipped"][0]["error"]
  assert [r.video_id for r in _shard_records(out, "train")] == [video_ids[0], video_ids[2]]


def test_build_rejects_more_shards_than_videos(tmp_path, raw_roots):
  with pytest.raises(build.BuildError, match=r"--num_shards must be in \[1, 3\]"):
    build.build("jhmdb", raw_roots["jhmdb"], "test", str(tmp_path), num_shards=4)


def test_verify_and_list_shards_catch_damage(tmp_path, raw_roots):
  out = str(tmp_path / "out")
  build.build("a2d", raw_roots["a2d"], "test", out, num_shards=2)
  first, second = shards.list_shards(out, "test")
  with open(first, "r+b") as f:
    f.seek(40)
    byte = f.read(1)
    f.seek(40)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(shards.ShardError, match=re.escape(f"{first}: sha256 differs")):
    shards.verify(out)
  os.remove(second)
  for check in (lambda: shards.list_shards(out, "test"), lambda: shards.verify(out)):
    with pytest.raises(shards.ShardError, match=re.escape(f"are missing: ['{second}']")):
      check()
  with pytest.raises(shards.ShardError, match="no dataset_info.json"):
    shards.verify(str(tmp_path / "elsewhere"))


def test_missing_raw_data_is_one_message(tmp_path, capsys):
  """A user's first mistakes: a wrong --raw, or a folder without the annotation files."""
  args = ["--dataset", "ytvos", "--split", "train", "--out", str(tmp_path / "out")]
  assert build.main(args + ["--raw", str(tmp_path / "nope")]) == 1
  assert capsys.readouterr().err == (f"error: {tmp_path / 'nope'}: no such directory (the raw "
                                     "ytvos dataset)\n")
  (tmp_path / "empty").mkdir()
  assert build.main(args + ["--raw", str(tmp_path / "empty")]) == 1
  expected = tmp_path / "empty" / "meta_expressions" / "train" / "meta_expressions.json"
  assert capsys.readouterr().err == f"error: missing file {expected}\n"
  assert not (tmp_path / "out").exists()
