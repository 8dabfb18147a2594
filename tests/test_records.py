"""records.encode / decode: round trip, the feature spec as protobuf sees it, and bad records."""

import io

import numpy as np
import pytest
from PIL import Image

from data_pipelines import raw
from data_pipelines import records


def _jpeg(rng, height, width):
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
      buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def _palette_png(id_map):
  """An id map as YTVOS stores it: a palette PNG whose indices are the object ids."""
  image = Image.fromarray(id_map, mode="P")
  image.putpalette([c for i in range(256) for c in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def _record(**overrides):
  """A 4-frame video, 3 annotated frames (one with two overlapping id maps), ids {1, 3, 7}."""
  rng = np.random.default_rng(0)
  height, width = 12, 16
  maps = [np.zeros((height, width), np.uint8) for _ in range(3)]
  maps[0][2:5, 3:9] = 1
  maps[0][7:10, 1:4] = 3
  maps[1][2:6, 2:8] = 7
  maps[2][3:6, 4:9] = 1
  fields = dict(
      dataset="ytvos", split="train", video_id="0a1b2c",
      frame_names=("00000", "00005", "00010", "00015"),
      frames=tuple(_jpeg(rng, height, width) for _ in range(4)), frame_format="jpeg",
      height=height, width=width, mask_frames=("00000", "00010", "00010"),
      masks=tuple(_palette_png(m) for m in maps),
      expressions=(raw.Expression("0", "a zebra running to the right", (1,)),
                   raw.Expression("1", "les deux chats à gauche", (3, 7)),
                   raw.Expression("2", "the zebra, again!", (1,))),
      meta={"category/1": "zebra", "category/3": "cat", "category/7": "cat"})
  fields.update(overrides)
  return raw.VideoRecord(**fields)


def _example(data):
  return records.example_pb2.Example.FromString(data)


def _values(example, name, kind):
  return list(getattr(example.features.feature[name], kind).value)


def test_round_trip_field_by_field():
  record = _record()
  decoded = records.decode(records.encode(record), where="test")
  for field in ("dataset", "split", "video_id", "frame_names", "frames", "frame_format",
                "height", "width", "mask_frames", "masks", "expressions", "meta"):
    assert getattr(decoded, field) == getattr(record, field), field
  assert all(type(f) is bytes for f in decoded.frames + decoded.masks)
  assert decoded == record


def test_features_as_protobuf_parses_them():
  record = _record()
  example = _example(records.encode(record))
  assert set(example.features.feature) == set(records.FEATURE_SPEC)
  for name, (kind, _) in records.FEATURE_SPEC.items():
    assert example.features.feature[name].WhichOneof("kind") == kind, name
  assert _values(example, "frames", "bytes_list") == list(record.frames)
  assert _values(example, "masks", "bytes_list") == list(record.masks)
  # Object ids in the masks, as PIL reads the palette indices: {1, 3, 7}.
  pil_ids = set()
  for png in record.masks:
    pil_ids |= set(np.unique(np.array(Image.open(io.BytesIO(png)))).tolist())
  assert _values(example, "mask_obj_ids", "int64_list") == sorted(pil_ids - {0}) == [1, 3, 7]
  assert _values(example, "exp_obj_ids", "int64_list") == [1, 3, 7, 1]
  assert _values(example, "exp_obj_row_splits", "int64_list") == [0, 1, 3, 4]
  assert _values(example, "exp_texts", "bytes_list")[1] == "les deux chats à gauche".encode()
  assert _values(example, "meta_keys", "bytes_list") == [b"category/1", b"category/3",
                                                         b"category/7"]


def test_encoding_is_deterministic_and_independent_of_meta_order():
  record = _record()
  reordered = _record(meta=dict(reversed(list(record.meta.items()))))
  assert records.encode(record) == records.encode(_record()) == records.encode(reordered)


def test_unannotated_record_keeps_typed_empty_features():
  record = _record(split="valid", mask_frames=(), masks=(), meta={},
                   expressions=(raw.Expression("0", "a cat", (5,)), raw.Expression("1", "a", ())))
  data = records.encode(record)
  example = _example(data)
  assert example.features.feature["masks"].WhichOneof("kind") == "bytes_list"
  assert example.features.feature["mask_obj_ids"].WhichOneof("kind") == "int64_list"
  assert records.decode(data) == record


def _tampered(mutate):
  """Encodes the test record, applies `mutate` to its Example and re-serialises it."""
  example = _example(records.encode(_record()))
  mutate(example.features.feature)
  return example.SerializeToString()


def _set_ints(name, values):
  def mutate(feature):
    del feature[name].int64_list.value[:]
    feature[name].int64_list.value.extend(values)
  return mutate


def _set_bytes(name, values):
  def mutate(feature):
    del feature[name].bytes_list.value[:]
    feature[name].bytes_list.value.extend(values)
  return mutate


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f.pop("frames"), r"missing feature\(s\) \['frames'\]"),
    (lambda f: f["height"].float_list.value.append(1.0), "'height' is float_list"),
    (_set_ints("width", [16, 16]), "'width' has 2 values"),
    (_set_ints("version", [records.RECORD_VERSION + 1]), "record version"),
    (_set_bytes("exp_texts", [b"a", b"  ", b"c"]), "expression '1' has an empty text"),
    (_set_ints("exp_obj_ids", [1, 3, 99, 1]), r"unknown object id\(s\) \[99\]"),
    (_set_ints("exp_obj_row_splits", [0, 1, 1, 4]), "expression '1' refers to no object"),
    (_set_ints("exp_obj_row_splits", [0, 3, 1, 4]), "do not split"),
    (_set_bytes("video_id", [b"\xff\xfe"]), "'video_id' is not UTF-8"),
    (_set_bytes("mask_frames", [b"00000", b"00010", b"00020"]), "masks for frames that are not"),
])
def test_decode_rejects_bad_records_naming_where(mutate, message):
  where = "shard-00003-of-00008.tfrecord record 17"
  with pytest.raises(records.RecordError, match=message) as error:
    records.decode(_tampered(mutate), where=where)
  assert str(error.value).startswith(where)


def test_decode_rejects_bytes_that_are_not_an_example():
  with pytest.raises(records.RecordError, match="x.tfrecord record 2: not a tf.train.Example"):
    records.decode(b"\x0a\xff\xff\xff\xff", where="x.tfrecord record 2")


@pytest.mark.parametrize("overrides, message", [
    (dict(expressions=(raw.Expression("0", " \t", (1,)),)), "expression '0' has an empty text"),
    (dict(expressions=(raw.Expression("4", "the dog", (1, 9)),)),
     r"expression '4' refers to unknown object id\(s\) \[9\]: the masks hold ids \[1, 3, 7\]"),
    (dict(expressions=(raw.Expression("0", "nothing", ()),)), "refers to no object"),
    (dict(height=10), r"mask 0: size \(H, W\) \(12, 16\) differs"),
    (dict(masks=(b"not a png",) * 3), "mask 0"),
])
def test_encode_rejects_bad_records_naming_the_video(overrides, message):
  with pytest.raises(records.RecordError, match=message) as error:
    records.encode(_record(**overrides))
  assert str(error.value).startswith("ytvos/train/0a1b2c")


def test_tf_data_parses_the_spec():
  tf = pytest.importorskip("tensorflow")
  record = _record()
  dtypes = {records.BYTES: tf.string, records.INT64: tf.int64}
  spec = {name: tf.io.VarLenFeature(dtypes[kind])
          for name, (kind, _) in records.FEATURE_SPEC.items()}
  parsed = tf.io.parse_single_example(records.encode(record), spec)
  dense = {k: tf.sparse.to_dense(v).numpy() for k, v in parsed.items()}
  assert list(dense["frames"]) == list(record.frames)
  obj_ids = tf.RaggedTensor.from_row_splits(dense["exp_obj_ids"], dense["exp_obj_row_splits"])
  assert obj_ids.to_list() == [list(e.obj_ids) for e in record.expressions]
