"""A2D-Sentences: MTTR's sample lists and COCO ground truth, from the official release.

Reads (under the dataset root, in the layout MTTR and ReferFormer use):
  Release/videoset.csv                 9 columns, the last the usage (0 train, 1 test); the
                                       release has no header line, some copies add one
  text_annotations/a2d_annotation.txt  header `video_id,instance_id,query`, one row per
                                       referred instance
  text_annotations/a2d_missed_videos.txt         the videos without sentences
  text_annotations/a2d_annotation_with_instances/<vid>/<%05d>.h5   (data_pipelines/a2d.py)

Writes, when absent (else checks they agree), MTTR's files with MTTR's protocol
(MTTR datasets/a2d_sentences/a2d_sentences_dataset.py:48-98 and
create_gt_in_coco_format.py:22-94):
  a2d_sentences_single_frame_{train,test}_annotations.json
      [query.lower(), video_id, frame (1-based, from the .h5 name), instance_id] for every
      sentence of a video of that usage that is not a missed video, and every annotated
      frame (sorted) whose `instance` ids hold the sentence's instance; queries keep their
      spaces (MTTR collapses them only when it loads a sample);
  a2d_sentences_test_annotations_in_coco_format.json
      one COCO image and annotation per test sample, in the same order: image id
      "v_<vid>_f_<frame>_i_<instance>", the mask as compressed RLE, its area, the reBBox box
      as [x, y, w, h], category 1 ("dummy_class").
A row whose instance id is not a number (the release has one, `1 (copy)` in a train video)
is dropped, as MTTR drops it.
"""

import csv
import glob
import io
import os

import numpy as np
from pycocotools import mask as mask_utils

from data_pipelines import a2d
from data_pipelines import raw_io
from data_pipelines.prepare import plan as plan_lib

VIDEOSET = os.path.join("Release", "videoset.csv")
SENTENCES = os.path.join("text_annotations", "a2d_annotation.txt")
MISSED = os.path.join("text_annotations", "a2d_missed_videos.txt")
MAT_DIR = os.path.join("Release", "Annotations", "mat")
GT_NAME = "a2d_sentences_test_annotations_in_coco_format.json"
USAGE = {"train": 0, "test": 1}
SOURCE = "https://kgavrilyuk.github.io/publication/actor_action/"
_SENTENCE_HEADER = ["video_id", "instance_id", "query"]
_VIDEOSET_COLUMNS = 9
_VIDEOSET_HEADER_FIRST = "VID"


def read_videoset(path: str) -> tuple[dict[str, int], bool]:
  """{video_id: usage} of videoset.csv, and whether its first line is a header."""
  rows = list(csv.reader(io.StringIO(_text(path))))
  header = bool(rows) and rows[0][:1] == [_VIDEOSET_HEADER_FIRST]
  usage = {}
  for number, row in enumerate(rows[1:] if header else rows, start=2 if header else 1):
    if len(row) != _VIDEOSET_COLUMNS or row[8].strip() not in ("0", "1"):
      raise raw_io.RawDataError(f"{path}: line {number} is not {_VIDEOSET_COLUMNS} columns "
                                f"ending in the usage 0 or 1: {row!r}")
    if row[0] in usage:
      raise raw_io.RawDataError(f"{path}: line {number}: video {row[0]} is listed twice")
    usage[row[0]] = int(row[8])
  return usage, header


def read_missed(path: str) -> set[str]:
  """The video ids of a2d_missed_videos.txt (one per line; the last has no newline)."""
  return {line.strip() for line in _text(path).splitlines() if line.strip()}


def read_sentences(path: str) -> list[tuple[int, str, str, str]]:
  """The rows of a2d_annotation.txt as (line number, video_id, instance_id, query).

  The instance id and the query are kept as written (case, spaces, `1 (copy)`).
  """
  rows = list(csv.reader(io.StringIO(_text(path))))
  if not rows or rows[0] != _SENTENCE_HEADER:
    raise raw_io.RawDataError(f"{path}: the first line is not the header "
                              f"{','.join(_SENTENCE_HEADER)}")
  sentences = []
  for number, row in enumerate(rows[1:], start=2):
    if len(row) != 3:
      raise raw_io.RawDataError(f"{path}: line {number} has {len(row)} fields, not 3 "
                                f"(video_id, instance_id, query): {row!r}")
    sentences.append((number, *row))
  return sentences


def instance_number(instance_id: str) -> int | None:
  """The instance id as MTTR's `int()` reads it, or None (MTTR drops such rows)."""
  try:
    return int(instance_id)
  except ValueError:
    return None


def image_id(video_id: str, frame: int, instance: int) -> str:
  """MTTR's COCO image id of a sample (MTTR a2d_sentences_dataset.py get_image_id)."""
  return f"v_{video_id}_f_{frame}_i_{instance}"


def plan(root: str) -> plan_lib.Plan:
  """Derives MTTR's three files from the official release under `root`."""
  result = plan_lib.Plan("a2d")
  paths = {name: os.path.join(root, name) for name in (VIDEOSET, SENTENCES, MISSED)}
  for path in paths.values():
    if not os.path.exists(path):
      raise plan_lib.PrepareError(f"missing file {path} (from the A2D / A2D-Sentences "
                                  f"release, {SOURCE})")
  mask_dir = _mask_dir(root)
  usage, header = read_videoset(paths[VIDEOSET])
  missed = read_missed(paths[MISSED])
  sentences = read_sentences(paths[SENTENCES])
  result.read += [
      f"{paths[VIDEOSET]}: {len(usage)} videos "
      f"({'a header line, skipped' if header else 'no header line'})",
      f"{paths[SENTENCES]}: {len(sentences)} sentences",
      f"{paths[MISSED]}: {len(missed)} videos without sentences"]

  frames = _VideoFrames(mask_dir, result.problems)
  samples, gt_sources = _samples(sentences, usage, missed, frames, paths[SENTENCES], result)
  unsaid = set(usage) - missed - {video_id for _, video_id, _, _ in sentences}
  if unsaid:
    result.notes.append(f"{len(unsaid)} videos of {VIDEOSET} are neither in {SENTENCES} nor "
                        f"in {MISSED}, e.g. {sorted(unsaid)[:3]}")
  result.read.append(f"{mask_dir}: {frames.count} .h5 files of {len(frames.videos)} videos")

  for split, split_samples in samples.items():
    result.outputs.append(plan_lib.Output(
        a2d.samples_path(root, split), f"{len(split_samples)} samples of "
        f"{len({s[1] for s in split_samples})} {split} videos", value=split_samples))
  gt = coco_ground_truth(samples["test"], gt_sources)
  result.outputs.append(plan_lib.Output(
      os.path.join(root, GT_NAME), f"{len(gt['images'])} test masks from the .h5 files",
      value=gt))
  return result


def _samples(sentences: list[tuple[int, str, str, str]], usage: dict[str, int],
             missed: set[str], frames: "_VideoFrames", path: str, result: plan_lib.Plan
             ) -> tuple[dict[str, list[list]], list[tuple[str, int]]]:
  """MTTR's samples of each split, and each test sample's (.h5 path, instance index).

  Rows that contradict the other files go to `result.problems`, dropped rows to its notes.
  """
  split_of = {usage: split for split, usage in USAGE.items()}
  samples = {split: [] for split in USAGE}
  gt_sources, test_instances = [], set()
  for number, video_id, instance_id, query in sentences:
    where = f"{path} line {number}"
    if video_id not in usage:
      result.problems.append(f"{where}: video {video_id} is not in {VIDEOSET}")
      continue
    if video_id in missed:
      result.problems.append(f"{where}: video {video_id} is listed in {MISSED}")
      continue
    instance = instance_number(instance_id)
    if instance is None:
      result.notes.append(f"dropped {where}: instance id {instance_id!r} of video {video_id} "
                          f"is not a number (MTTR drops it too)")
      continue
    split = split_of[usage[video_id]]
    if split == "test":
      if (video_id, instance) in test_instances:
        result.problems.append(f"{where}: instance {instance} of test video {video_id} is "
                               f"listed again (its COCO image ids would repeat)")
        continue
      test_instances.add((video_id, instance))
    for frame, h5_path, instance_ids in frames.get(video_id):
      if instance in instance_ids:
        samples[split].append([query.lower(), video_id, frame, instance])
        if split == "test":
          gt_sources.append((h5_path, instance_ids.index(instance)))
  return samples, gt_sources


def coco_ground_truth(samples: list[list], sources: list[tuple[str, int]]) -> dict:
  """MTTR's COCO ground truth of the test samples: images, RLE masks, areas, boxes.

  Args:
    samples: the test samples [query, video_id, frame, instance].
    sources: for each sample, its .h5 path and the instance's index in that file.
  """
  images, annotations = [], []
  for (_, video_id, frame, instance), (path, index) in zip(samples, sources):
    key = image_id(video_id, frame, instance)
    _, masks = a2d.read_instances(path)
    mask = np.asfortranarray(masks[index].astype(np.uint8))
    x1, y1, x2, y2 = (float(v) for v in a2d.read_boxes(path)[index])
    rle = mask_utils.encode(mask)
    rle["counts"] = rle["counts"].decode("ascii")
    images.append({"id": key, "height": mask.shape[0], "width": mask.shape[1]})
    annotations.append({"id": len(annotations) + 1, "image_id": key, "category_id": 1,
                        "segmentation": rle, "area": float(mask_utils.area(rle)),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
  return {"categories": [{"id": 1, "name": "dummy_class"}], "images": images,
          "annotations": annotations}


class _VideoFrames:
  """The annotated frames of each video, read once: [(frame, .h5 path, instance ids)]."""

  def __init__(self, mask_dir: str, problems: list[str]):
    self._mask_dir = mask_dir
    self._problems = problems
    self._cache = {}
    self.videos = set()
    self.count = 0

  def get(self, video_id: str) -> list[tuple[int, str, list[int]]]:
    if video_id not in self._cache:
      self._cache[video_id] = self._read(video_id)
    return self._cache[video_id]

  def _read(self, video_id: str) -> list[tuple[int, str, list[int]]]:
    paths = sorted(glob.glob(os.path.join(glob.escape(self._mask_dir), glob.escape(video_id),
                                          "*.h5")))
    if not paths:
      self._problems.append(f"{os.path.join(self._mask_dir, video_id)}: no .h5 files, so the "
                            f"sentences of video {video_id} have no samples")
    frames = []
    for path in paths:
      stem = os.path.splitext(os.path.basename(path))[0]
      if not stem.isdigit():
        self._problems.append(f"{path}: the name is not a frame number")
        continue
      frames.append((int(stem), path, a2d.read_instance_ids(path)))
    self.videos.add(video_id)
    self.count += len(frames)
    return frames


def _mask_dir(root: str) -> str:
  """The A2D-Sentences .h5 folder; its absence is explained (the .mat files cannot stand in)."""
  mask_dir = os.path.join(root, a2d.MASK_DIR)
  if os.path.isdir(mask_dir):
    return mask_dir
  found = os.path.join(root, MAT_DIR)
  instead = (f"; {found} holds the original A2D .mat files, which have no instance ids"
             if os.path.isdir(found) else "")
  raise plan_lib.PrepareError(
      f"missing folder {mask_dir}: unzip A2D-Sentences' a2d_annotation_with_instances.zip "
      f"({SOURCE}) there{instead}")


def _text(path: str) -> str:
  try:
    return raw_io.read_bytes(path).decode("utf-8")
  except UnicodeDecodeError as e:
    raise raw_io.RawDataError(f"{path}: not UTF-8 text: {e}") from None

