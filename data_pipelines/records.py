"""One `VideoRecord` <-> one serialised `tf.train.Example`, written and read without TensorFlow.

Feature spec (version 1). F frames, M mask entries, E expressions, K object ids in the masks,
N meta entries. Every feature is present in every record, possibly as an empty list; strings
are UTF-8 bytes.

  version              int64  [1]      RECORD_VERSION
  dataset              bytes  [1]      "ytvos", "davis", "a2d", "jhmdb" or "refcoco"
  split                bytes  [1]      e.g. "train", "refcoco+/val"
  video_id             bytes  [1]
  frame_format         bytes  [1]      "jpeg" or "png"
  height, width        int64  [1]      frame size in pixels
  frame_names          bytes  [F]      temporal order
  frames               bytes  [F]      the stored JPEG / PNG file bytes, aligned with frame_names
  mask_frames          bytes  [M]      annotated frame names (repeated for overlapping id maps)
  masks                bytes  [M]      single-channel id-map PNG bytes, aligned with mask_frames
  mask_obj_ids         int64  [K]      sorted non-zero ids present in the masks (computed by encode)
  exp_ids              bytes  [E]
  exp_texts            bytes  [E]
  exp_obj_ids          int64  [sum]    the obj_ids of every expression, concatenated
  exp_obj_row_splits   int64  [E + 1]  expression e refers to exp_obj_ids[s[e]:s[e + 1]]
  meta_keys            bytes  [N]      sorted
  meta_values          bytes  [N]      aligned with meta_keys

tf.data users parse it with `tf.io.parse_single_example` and `tf.io.VarLenFeature` per name
(dtypes as above) and `tf.RaggedTensor.from_row_splits(exp_obj_ids, exp_obj_row_splits)`.

Validation, done by `encode` (so a build catches it) and again by `decode` (so a corrupt or
foreign record is caught where it is read); errors name `where` (shard and record index):
- decode: unparsable bytes, a missing feature, a feature of the wrong kind or length, an
  unknown version, inconsistent row splits.
- both: an expression whose text is blank; in a record with masks, an expression that
  refers to no object or to an object id that appears in none of the masks ("unknown object
  id"). Records without any mask (the unannotated evaluation splits: Ref-YTVOS valid/test
  expressions carry no object ids) are exempt from the object checks.
- encode: a mask that is not an id-map PNG ('L' or palette, see raw_io) of the frame size.
The `VideoRecord` contract itself (alignment of names and bytes, mask frames among the frames,
frame format) is checked by `raw.VideoRecord`. decode leaves the image bytes encoded: a corrupt
frame surfaces where the pipeline decodes the few frames a clip needs.
"""

import importlib.util
import os
import sys

import numpy as np

from data_pipelines import raw
from data_pipelines import raw_io
from vdit_jax import errors

RECORD_VERSION = 1

BYTES = "bytes_list"
INT64 = "int64_list"

# name -> (kind, length): length is an int for fixed-size features, else a shape string.
FEATURE_SPEC = {
    "version": (INT64, 1),
    "dataset": (BYTES, 1),
    "split": (BYTES, 1),
    "video_id": (BYTES, 1),
    "frame_format": (BYTES, 1),
    "height": (INT64, 1),
    "width": (INT64, 1),
    "frame_names": (BYTES, "F"),
    "frames": (BYTES, "F"),
    "mask_frames": (BYTES, "M"),
    "masks": (BYTES, "M"),
    "mask_obj_ids": (INT64, "K"),
    "exp_ids": (BYTES, "E"),
    "exp_texts": (BYTES, "E"),
    "exp_obj_ids": (INT64, "sum of objects per expression"),
    "exp_obj_row_splits": (INT64, "E + 1"),
    "meta_keys": (BYTES, "N"),
    "meta_values": (BYTES, "N"),
}


class RecordError(errors.UserError, ValueError):
  """A record that breaks the feature spec or the VideoRecord contract."""


def _load_example_pb2():
  """Imports `tfrecord.example_pb2` without running `tfrecord/__init__.py`.

  The package's __init__ imports torch (3 s), which every spawned build or grain worker would
  pay; the proto module itself needs only protobuf. A later `import tfrecord` reuses it.
  """
  name = "tfrecord.example_pb2"
  if name not in sys.modules:
    package = importlib.util.find_spec("tfrecord")
    path = os.path.join(package.submodule_search_locations[0], "example_pb2.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
  return sys.modules[name]


example_pb2 = _load_example_pb2()
_LIST_TYPES = {BYTES: example_pb2.BytesList, INT64: example_pb2.Int64List}


def feature_spec_json() -> dict[str, dict[str, str]]:
  """The feature spec as written into dataset_info.json."""
  dtypes = {BYTES: "bytes", INT64: "int64"}
  return {name: {"dtype": dtypes[kind], "length": str(length)}
          for name, (kind, length) in FEATURE_SPEC.items()}


def _mask_object_ids(masks: tuple[bytes, ...], height: int, width: int, where: str) -> list[int]:
  """The sorted non-zero ids present in id-map PNGs; checks each is an HxW id map."""
  ids = set()
  for i, png in enumerate(masks):
    try:
      id_map = raw_io.decode_id_map(png, f"{where} mask {i}")
    except raw_io.RawDataError as e:
      raise RecordError(str(e)) from e
    if id_map.shape != (height, width):
      raise RecordError(f"{where} mask {i}: size (H, W) {id_map.shape} differs from the "
                        f"frames' {(height, width)}")
    ids.update(np.flatnonzero(np.bincount(id_map.ravel())).tolist())  # no sort, unlike unique
  ids.discard(0)
  return sorted(ids)


def _check_expressions(expressions: tuple[raw.Expression, ...], mask_obj_ids: list[int],
                       has_masks: bool, where: str) -> None:
  """Texts must not be blank; with masks, every expression must name objects they hold."""
  known = set(mask_obj_ids)
  for e in expressions:
    if not e.text.strip():
      raise RecordError(f"{where}: expression {e.exp_id!r} has an empty text")
    if not has_masks:
      continue
    if not e.obj_ids:
      raise RecordError(f"{where}: expression {e.exp_id!r} refers to no object")
    unknown = sorted(set(e.obj_ids) - known)
    if unknown:
      raise RecordError(f"{where}: expression {e.exp_id!r} refers to unknown object id(s) "
                        f"{unknown}: the masks hold ids {mask_obj_ids}")


def _utf8(strings) -> list[bytes]:
  return [s.encode("utf-8") for s in strings]


def _record_name(record: raw.VideoRecord) -> str:
  return f"{record.dataset}/{record.split}/{record.video_id}"


def encode(record: raw.VideoRecord) -> bytes:
  """Serialises a record into a tf.train.Example (deterministic bytes); validates it first."""
  where = _record_name(record)
  mask_obj_ids = _mask_object_ids(record.masks, record.height, record.width, where)
  _check_expressions(record.expressions, mask_obj_ids, bool(record.masks), where)
  row_splits = np.cumsum([0] + [len(e.obj_ids) for e in record.expressions]).tolist()
  meta_keys = sorted(record.meta)
  values = {
      "version": [RECORD_VERSION],
      "dataset": _utf8([record.dataset]),
      "split": _utf8([record.split]),
      "video_id": _utf8([record.video_id]),
      "frame_format": _utf8([record.frame_format]),
      "height": [record.height],
      "width": [record.width],
      "frame_names": _utf8(record.frame_names),
      "frames": list(record.frames),
      "mask_frames": _utf8(record.mask_frames),
      "masks": list(record.masks),
      "mask_obj_ids": mask_obj_ids,
      "exp_ids": _utf8(e.exp_id for e in record.expressions),
      "exp_texts": _utf8(e.text for e in record.expressions),
      "exp_obj_ids": [i for e in record.expressions for i in e.obj_ids],
      "exp_obj_row_splits": row_splits,
      "meta_keys": _utf8(meta_keys),
      "meta_values": _utf8(record.meta[k] for k in meta_keys),
  }
  example = example_pb2.Example()
  for name, (kind, _) in FEATURE_SPEC.items():
    # CopyFrom of an empty list still marks the kind as set, so empty features keep their type.
    getattr(example.features.feature[name], kind).CopyFrom(
        _LIST_TYPES[kind](value=values[name]))
  return example.SerializeToString(deterministic=True)


def parse(data: bytes, where: str) -> dict[str, list]:
  """Parses an Example into {feature name: list of values}, checking that every spec feature
  is there with its kind and length (the values themselves are checked by `decode`)."""
  try:
    example = example_pb2.Example.FromString(data)
  except Exception as e:  # protobuf raises its own DecodeError, not a ValueError
    raise RecordError(f"{where}: not a tf.train.Example ({e})") from e
  feature_map = example.features.feature
  missing = [name for name in FEATURE_SPEC if name not in feature_map]
  if missing:
    raise RecordError(f"{where}: missing feature(s) {missing}")
  features = {}
  for name, (kind, length) in FEATURE_SPEC.items():
    found = feature_map[name].WhichOneof("kind")
    if found != kind:
      raise RecordError(f"{where}: feature {name!r} is {found}, expected {kind}")
    value = list(getattr(feature_map[name], kind).value)
    if isinstance(length, int) and len(value) != length:
      raise RecordError(f"{where}: feature {name!r} has {len(value)} values, expected {length}")
    features[name] = value
  return features


def _texts(values: list[bytes], name: str, where: str) -> tuple[str, ...]:
  try:
    return tuple(v.decode("utf-8") for v in values)
  except UnicodeDecodeError as e:
    raise RecordError(f"{where}: feature {name!r} is not UTF-8 ({e})") from e


def _expressions(f: dict[str, list], where: str) -> tuple[raw.Expression, ...]:
  ids, texts = _texts(f["exp_ids"], "exp_ids", where), _texts(f["exp_texts"], "exp_texts", where)
  splits, obj_ids = f["exp_obj_row_splits"], f["exp_obj_ids"]
  if len(texts) != len(ids) or len(splits) != len(ids) + 1:
    raise RecordError(f"{where}: {len(ids)} exp_ids, {len(texts)} exp_texts and "
                      f"{len(splits)} exp_obj_row_splits (expected {len(ids) + 1})")
  if splits[0] != 0 or splits[-1] != len(obj_ids) or np.any(np.diff(splits) < 0):
    raise RecordError(f"{where}: exp_obj_row_splits {splits} do not split "
                      f"{len(obj_ids)} exp_obj_ids")
  return tuple(raw.Expression(exp_id=i, text=t, obj_ids=tuple(obj_ids[s:e]))
               for i, t, s, e in zip(ids, texts, splits[:-1], splits[1:]))


def decode(data: bytes, *, where: str = "") -> raw.VideoRecord:
  """Parses and validates a record written by `encode`; errors name `where`."""
  where = where or "record"
  f = parse(data, where)
  if f["version"][0] != RECORD_VERSION:
    raise RecordError(f"{where}: record version {f['version'][0]}, this reader knows "
                      f"{RECORD_VERSION}")
  texts = {name: _texts(f[name], name, where) for name in (
      "dataset", "split", "video_id", "frame_format", "frame_names", "mask_frames",
      "meta_keys", "meta_values")}
  if len(texts["meta_keys"]) != len(texts["meta_values"]):
    raise RecordError(f"{where}: {len(texts['meta_keys'])} meta_keys but "
                      f"{len(texts['meta_values'])} meta_values")
  expressions = _expressions(f, where)
  _check_expressions(expressions, f["mask_obj_ids"], bool(f["masks"]), where)
  try:
    return raw.VideoRecord(
        dataset=texts["dataset"][0], split=texts["split"][0], video_id=texts["video_id"][0],
        frame_names=texts["frame_names"], frames=tuple(f["frames"]),
        frame_format=texts["frame_format"][0], height=f["height"][0], width=f["width"][0],
        mask_frames=texts["mask_frames"], masks=tuple(f["masks"]), expressions=expressions,
        meta=dict(zip(texts["meta_keys"], texts["meta_values"])))
  except ValueError as e:
    raise RecordError(f"{where}: {e}") from e
