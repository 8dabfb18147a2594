"""Reader of Ref-YouTube-VOS, and of the YTVOS-style layout Ref-DAVIS17 is converted to.

Layout (the Ref-YouTube-VOS competition release, as ReferFormer's datasets/ytvos.py reads it):
  <root>/{train,valid}/JPEGImages/<vid>/<frame>.jpg
  <root>/train/Annotations/<vid>/<frame>.png   palette PNG, palette index = object id
  <root>/{train,valid}/meta.json               {"videos": {vid: {"objects": {id: {"category"}}}}}
  <root>/meta_expressions/{train,valid,test}/meta_expressions.json
      {"videos": {vid: {"expressions": {exp_id: {"exp", "obj_id"}}, "frames": [...]}}}
      (valid and test expressions have no "obj_id"; URVOS's original per-object files,
      {"videos": {vid: {"objects": ...}}}, are another layout and are refused)

Splits: "train"; "valid" = the videos of meta_expressions/valid minus those of
meta_expressions/test (the 202 validation videos of the 507 the release lists); "test" =
the videos of meta_expressions/test. Valid and test frames both live in valid/JPEGImages and
have no masks.

A record's frames are the JPEGs its meta_expressions `frames` lists, sorted; its masks are
the annotation PNGs of those frames, kept as they are on disk (the id map of a palette PNG
is its palette indices); `meta` maps "category/<obj_id>" to the meta.json category.
"""

import os

from data_pipelines import raw
from data_pipelines import raw_io

DATASET = "ytvos"
SPLITS = ("train", "valid", "test")

# The release's meta_expressions/valid lists the validation and test videos together.
_RELEASE_VALID_AND_TEST = 507
_RELEASE_VALID = 202


def meta_expressions_path(root: str, split: str) -> str:
  return os.path.join(root, "meta_expressions", split, "meta_expressions.json")


def layout_videos(root: str, split: str) -> dict:
  """The `videos` dict of a split's meta_expressions.json."""
  path = meta_expressions_path(root, split)
  videos = raw_io.load_json(path).get("videos")
  if not isinstance(videos, dict):
    raise raw_io.RawDataError(f"{path}: no 'videos' dict")
  return videos


def list_videos(root: str, split: str) -> list[str]:
  """The sorted video ids of `split` (see the module docstring for the valid rule)."""
  raw_io.check_split(DATASET, split, SPLITS)
  if split != "valid":
    return sorted(layout_videos(root, split))
  listed = set(layout_videos(root, "valid"))
  valid = listed - set(layout_videos(root, "test"))
  if len(listed) == _RELEASE_VALID_AND_TEST and len(valid) != _RELEASE_VALID:
    raise raw_io.RawDataError(
        f"{meta_expressions_path(root, 'valid')}: the release's {len(listed)} videos minus "
        f"the test videos should leave {_RELEASE_VALID}, found {len(valid)}")
  return sorted(valid)


def read_video(root: str, split: str, video_id: str) -> raw.VideoRecord:
  """Reads one Ref-YouTube-VOS video with its masks (train only) and expressions."""
  raw_io.check_split(DATASET, split, SPLITS)
  if split == "valid" and video_id not in list_videos(root, split):
    raise raw_io.RawDataError(f"{DATASET}/valid: {video_id!r} is not a validation video")
  return read_layout_video(
      DATASET, root, split, video_id, image_split="train" if split == "train" else "valid",
      with_masks=split == "train")


def read_layout_video(dataset: str, root: str, split: str, video_id: str, *,
                      image_split: str, with_masks: bool) -> raw.VideoRecord:
  """Reads one video of a YTVOS-style layout.

  Args:
    dataset, split: the record's dataset and split; meta_expressions/<split> lists the video.
    image_split: the folder holding its JPEGImages, Annotations and meta.json.
    with_masks: whether Annotations/<vid>/<frame>.png exists for every frame.
  """
  where = f"{dataset}/{split}/{video_id}"
  exp_path = meta_expressions_path(root, split)
  entry = layout_videos(root, split).get(video_id)
  if not isinstance(entry, dict):
    raise raw_io.RawDataError(f"{exp_path}: no video {video_id!r}")
  if "expressions" not in entry and "objects" in entry:
    raise raw_io.RawDataError(
        f"{exp_path}: {where} lists 'objects', not 'expressions' and 'frames': this is URVOS's "
        f"original per-object layout; the competition release's meta_expressions is expected")
  frame_names = entry.get("frames")
  if not isinstance(frame_names, list) or not frame_names:
    raise raw_io.RawDataError(f"{exp_path}: {where} lists no frames")
  frame_names = tuple(sorted(str(name) for name in frame_names))

  split_dir = os.path.join(root, image_split)
  frames, height, width = raw_io.read_frames(
      [os.path.join(split_dir, "JPEGImages", video_id, f"{name}.jpg") for name in frame_names],
      "jpeg", where)
  masks = ()
  if with_masks:
    masks = tuple(_read_mask(os.path.join(split_dir, "Annotations", video_id, f"{name}.png"),
                             (height, width)) for name in frame_names)
  categories = _categories(os.path.join(split_dir, "meta.json"), video_id, required=with_masks)
  return raw.VideoRecord(
      dataset=dataset, split=split, video_id=video_id,
      frame_names=frame_names, frames=frames, frame_format="jpeg",
      height=height, width=width,
      mask_frames=frame_names if with_masks else (), masks=masks,
      expressions=_expressions(entry, categories, f"{exp_path}: {where}"),
      meta={f"category/{obj_id}": category for obj_id, category in categories.items()})


def _read_mask(path: str, size: tuple[int, int]) -> bytes:
  data = raw_io.read_bytes(path)
  raw_io.check_size(raw_io.decode_id_map(data, path).shape, size, path)
  return data


def _categories(path: str, video_id: str, *, required: bool) -> dict[str, str]:
  """meta.json's objects of one video as {obj_id: category}; {} when optional and absent."""
  if not required and not os.path.exists(path):
    return {}
  video = raw_io.load_json(path).get("videos", {}).get(video_id)
  if not required and video is None:
    return {}
  if not isinstance(video, dict) or not isinstance(video.get("objects"), dict):
    raise raw_io.RawDataError(f"{path}: no objects for video {video_id!r}")
  return {str(obj_id): str(obj.get("category", "")) for obj_id, obj in video["objects"].items()}


def _expressions(entry: dict, categories: dict[str, str],
                 where: str) -> tuple[raw.Expression, ...]:
  """The expressions of a meta_expressions entry, in exp_id order.

  An obj_id must be an object of meta.json when the split has one; valid/test expressions
  may lack obj_id (then obj_ids is empty).
  """
  expressions = entry.get("expressions")
  if not isinstance(expressions, dict) or not expressions:
    raise raw_io.RawDataError(f"{where}: no expressions")
  result = []
  for exp_id in sorted(expressions, key=_exp_order):
    exp = expressions[exp_id]
    text = raw_io.check_text(exp.get("exp"), f"{where} expression {exp_id}")
    obj_ids = ()
    if "obj_id" in exp:
      obj_id = str(exp["obj_id"])
      if categories and obj_id not in categories:
        raise raw_io.RawDataError(f"{where} expression {exp_id}: unknown object id {obj_id!r} "
                                  f"(meta.json objects: {sorted(categories)})")
      obj_ids = (_int_id(obj_id, f"{where} expression {exp_id}"),)
    result.append(raw.Expression(exp_id=str(exp_id), text=text, obj_ids=obj_ids))
  return tuple(result)


def _exp_order(exp_id: str) -> tuple[int, str]:
  """Numeric ids in numeric order ("2" < "10"), then any others as strings."""
  return (int(exp_id), "") if exp_id.isdigit() else (1 << 62, exp_id)


def _int_id(obj_id: str, where: str) -> int:
  try:
    return int(obj_id)
  except ValueError:
    raise raw_io.RawDataError(f"{where}: object id {obj_id!r} is not an integer") from None
