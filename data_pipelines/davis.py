"""Reader of Ref-DAVIS17 (YTVOS-style converted layout) and of the DAVIS tree for scoring.

The converted layout (ReferFormer's tools/data/convert_davis_to_ytvos.py, or
`python -m data_pipelines.prepare --dataset davis`, data_pipelines/prepare/davis.py):
  <root>/{train,valid}/JPEGImages/<seq>/<%05d>.jpg
  <root>/{train,valid}/Annotations/<seq>/<%05d>.png   from Annotations_unsupervised (255 = void)
  <root>/{train,valid}/meta.json                       {"videos": {seq: {"objects": ...}}}
  <root>/meta_expressions/{train,valid}/meta_expressions.json

Each object owns 4 consecutive expressions, exp_ids 4k..4k+3 for the k-th object, in the
order annot1-first-frame, annot1-full-video, annot2-first-frame, annot2-full-video. The
reader checks that grouping and records each expression's run ("anno_id", 0..3, the
`anno_<k>` folder ReferFormer's inference_davis.py writes for the DAVIS scorer) in meta as
"anno_id/<exp_id>".

The DAVIS tree the official scorer reads (`list_sequences`, `read_gt`; the scorer itself
lands with the evaluation work):
  <davis>/ImageSets/2017/{train,val}.txt
  <davis>/JPEGImages/480p/<seq>/<%05d>.jpg
  <davis>/Annotations_unsupervised/480p/<seq>/<%05d>.png
"""

import dataclasses
import glob
import os

import numpy as np

from data_pipelines import raw
from data_pipelines import raw_io
from data_pipelines import ytvos

DATASET = "davis"
SPLITS = ("train", "valid")
EXPRESSIONS_PER_OBJECT = 4


def list_videos(root: str, split: str) -> list[str]:
  """The sorted sequence names of `split` in the converted layout."""
  _check_converted(root, split)
  return sorted(ytvos.layout_videos(root, split))


def read_video(root: str, split: str, video_id: str) -> raw.VideoRecord:
  """Reads one converted Ref-DAVIS17 sequence: every frame has an id map."""
  _check_converted(root, split)
  record = ytvos.read_layout_video(DATASET, root, split, video_id, image_split=split,
                                   with_masks=True)
  expressions = record.expressions
  where = f"{ytvos.meta_expressions_path(root, split)}: {DATASET}/{split}/{video_id}"
  if len(expressions) % EXPRESSIONS_PER_OBJECT:
    raise raw_io.RawDataError(f"{where}: {len(expressions)} expressions, not "
                              f"{EXPRESSIONS_PER_OBJECT} per object")
  for index, expression in enumerate(expressions):
    group = expressions[index - index % EXPRESSIONS_PER_OBJECT]
    if expression.exp_id != str(index) or expression.obj_ids != group.obj_ids:
      raise raw_io.RawDataError(
          f"{where}: expression {expression.exp_id} (object {expression.obj_ids}) breaks the "
          f"{EXPRESSIONS_PER_OBJECT}-per-object order of consecutive exp_ids from 0")
  meta = dict(record.meta)
  meta.update({f"anno_id/{e.exp_id}": str(int(e.exp_id) % EXPRESSIONS_PER_OBJECT)
               for e in expressions})
  return dataclasses.replace(record, meta=meta)


def _check_converted(root: str, split: str) -> None:
  raw_io.check_split(DATASET, split, SPLITS)
  path = ytvos.meta_expressions_path(root, split)
  if not os.path.exists(path):
    raise raw_io.RawDataError(
        f"missing file {path}: convert the DAVIS 2017 and Ref-DAVIS17 releases with "
        f"`python -m data_pipelines.prepare --dataset davis --raw {root}`")


def list_sequences(davis_root: str, image_set: str = "val") -> list[str]:
  """The sequences of ImageSets/2017/<image_set>.txt, in file order, as the scorer reads."""
  path = os.path.join(davis_root, "ImageSets", "2017", f"{image_set}.txt")
  text = raw_io.read_bytes(path).decode("utf-8")
  return [line.strip() for line in text.splitlines() if line.strip()]


def read_gt(davis_root: str, sequence: str, *, annotations: str = "Annotations_unsupervised",
            resolution: str = "480p") -> tuple[tuple[str, ...], np.ndarray]:
  """Reads the ground-truth id maps of one sequence of the DAVIS tree.

  Returns:
    (frame_names, ids): the sorted PNG stems, and their id maps as a (T, H, W) uint8 array
    (0 = background, 255 = void).
  """
  image_dir = os.path.join(davis_root, "JPEGImages", resolution, sequence)
  gt_dir = os.path.join(davis_root, annotations, resolution, sequence)
  paths = sorted(glob.glob(os.path.join(gt_dir, "*.png")))
  if not paths:
    raise raw_io.RawDataError(f"{gt_dir}: no ground-truth PNGs")
  names = tuple(os.path.splitext(os.path.basename(path))[0] for path in paths)
  for name in names:
    if not os.path.exists(os.path.join(image_dir, f"{name}.jpg")):
      raise raw_io.RawDataError(f"missing file {os.path.join(image_dir, f'{name}.jpg')}")
  ids = [raw_io.decode_id_map(raw_io.read_bytes(path), path) for path in paths]
  for path, id_map in zip(paths, ids):
    raw_io.check_size(id_map.shape, ids[0].shape, path)
  return names, np.stack(ids)
