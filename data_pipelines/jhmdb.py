"""Reader of JHMDB-Sentences (evaluation only) in the MTTR sample protocol.

Layout (MTTR datasets/jhmdb_sentences/jhmdb_sentences_dataset.py):
  <root>/Rename_Images/<action>/<vid>/<%05d>.png                  1-based frame numbers
  <root>/puppet_mask/<action>/<vid>/puppet_mask.mat               'part_mask' uint8 (H, W, T)
  <root>/jhmdb_sentences_samples_metadata.json
      a list of [video_id, "./jhmdb_sentences/Rename_Images/<action>/<vid>/<%05d>.png",
                 "./jhmdb_sentences/puppet_mask/<action>/<vid>/puppet_mask.mat",
                 video_total_frames, query]

The sample list is MTTR's datasets/jhmdb_sentences/jhmdb_sentences_samples_metadata.json
(github.com/mttr2021/MTTR), which ReferFormer and VD-IT use too: its 3 frames per video were
drawn at random once, so it is the benchmark and is not derived here.

The paths in the metadata are resolved from their "Rename_Images/" / "puppet_mask/" part
on, under `root`. One record per video (split "test"): frames 1..video_total_frames as they
are on disk (frame_format "png"), an id map per frame (id 1 = the puppet mask), and one
expression per sample, exp_id "<frame_idx>_<n>" (n counts repeats of that frame from 0),
obj_ids (1,); meta "frame/<exp_id>" names the sample's frame.
"""

import collections
import os

import numpy as np
import scipy.io

from data_pipelines import raw
from data_pipelines import raw_io

DATASET = "jhmdb"
SPLITS = ("test",)
METADATA = "jhmdb_sentences_samples_metadata.json"
PERSON_ID = 1


def list_videos(root: str, split: str) -> list[str]:
  """The sorted ids of the videos that have samples."""
  return sorted(_samples(root, split))


def read_video(root: str, split: str, video_id: str) -> raw.VideoRecord:
  """Reads one JHMDB video: its frames, puppet-mask id maps and sample expressions."""
  where = f"{DATASET}/{split}/{video_id}"
  metadata = os.path.join(root, METADATA)
  samples = _samples(root, split).get(video_id)
  if not samples:
    raise raw_io.RawDataError(f"{metadata}: no samples for video {video_id!r}")
  frame_dirs = {os.path.dirname(frame_path) for frame_path, _, _, _ in samples}
  mask_paths = {mask_path for _, mask_path, _, _ in samples}
  totals = {total for _, _, total, _ in samples}
  if len(frame_dirs) != 1 or len(mask_paths) != 1 or len(totals) != 1:
    raise raw_io.RawDataError(f"{metadata}: the samples of {where} disagree on the frame "
                              f"folder, mask file or frame count")
  frame_dir, mask_path, total = frame_dirs.pop(), mask_paths.pop(), totals.pop()

  frame_names = tuple(f"{index:05d}" for index in range(1, total + 1))
  frames, height, width = raw_io.read_frames(
      [os.path.join(root, frame_dir, f"{name}.png") for name in frame_names], "png", where)
  part_mask = _read_part_mask(os.path.join(root, mask_path), total, (height, width))
  masks = tuple(raw_io.encode_id_map((part_mask[:, :, t] > 0).astype(np.uint8) * PERSON_ID)
                for t in range(total))

  expressions, meta = _sample_expressions(samples, frame_names, f"{metadata}: {where}")
  return raw.VideoRecord(
      dataset=DATASET, split=split, video_id=video_id,
      frame_names=frame_names, frames=frames, frame_format="png",
      height=height, width=width, mask_frames=frame_names, masks=masks,
      expressions=expressions, meta=meta)


def _samples(root: str, split: str) -> dict[str, list[tuple[str, str, int, str]]]:
  raw_io.check_split(DATASET, split, SPLITS)
  path = os.path.join(root, METADATA)
  if not os.path.exists(path):
    raise raw_io.RawDataError(
        f"missing file {path}: JHMDB-Sentences is read with MTTR's fixed sample list; download "
        f"datasets/jhmdb_sentences/{METADATA} from github.com/mttr2021/MTTR")
  return raw_io.load_json_index(path, _samples_by_video)


def _sample_expressions(samples: list[tuple[str, str, int, str]], frame_names: tuple[str, ...],
                        where: str) -> tuple[tuple[raw.Expression, ...], dict[str, str]]:
  """One expression per sample, and meta naming each one's frame."""
  expressions, meta = [], {}
  repeats = collections.Counter()
  for frame_path, _, _, text in samples:
    name = os.path.splitext(os.path.basename(frame_path))[0]
    if name not in frame_names:
      raise raw_io.RawDataError(f"{where}: sample frame {frame_path} is not one of the "
                                f"{len(frame_names)} frames")
    exp_id = f"{int(name)}_{repeats[name]}"
    repeats[name] += 1
    expressions.append(raw.Expression(
        exp_id=exp_id, text=raw_io.check_text(text, f"{where} sample {exp_id}"),
        obj_ids=(PERSON_ID,)))
    meta[raw.anchor_key(exp_id)] = name
  return tuple(expressions), meta


def _samples_by_video(samples, path: str) -> dict[str, list[tuple[str, str, int, str]]]:
  """Groups the metadata by video: {video_id: [(frame_path, mask_path, total, query)]}.

  The two paths are made relative to the dataset root.
  """
  if not isinstance(samples, list):
    raise raw_io.RawDataError(f"{path}: expected a list of samples")
  by_video = collections.defaultdict(list)
  for index, sample in enumerate(samples):
    if (not isinstance(sample, list) or len(sample) != 5
        or not all(isinstance(x, str) for x in sample[:3])
        or not isinstance(sample[3], int) or sample[3] < 1):
      raise raw_io.RawDataError(f"{path}: sample {index} is not [video_id, frame_path, "
                                f"mask_path, video_total_frames, query]: {sample!r}")
    video_id, frame_path, mask_path, total, text = sample
    by_video[video_id].append((_under(frame_path, "Rename_Images", path),
                               _under(mask_path, "puppet_mask", path), total, text))
  return dict(by_video)


def _under(sample_path: str, folder: str, path: str) -> str:
  """The part of a metadata path from `folder` on, e.g. "Rename_Images/<action>/..."."""
  parts = sample_path.replace("\\", "/").split("/")
  if folder not in parts:
    raise raw_io.RawDataError(f"{path}: {sample_path!r} is not under {folder}/")
  return os.path.join(*parts[parts.index(folder):])


def _read_part_mask(path: str, total: int, size: tuple[int, int]) -> np.ndarray:
  """Reads 'part_mask' (H, W, T) and checks it covers `total` frames of `size` (H, W)."""
  if not os.path.exists(path):
    raise raw_io.RawDataError(f"missing file {path}")
  try:
    part_mask = scipy.io.loadmat(path)["part_mask"]
  except Exception as e:  # pylint: disable=broad-except
    # loadmat fails on malformed files with many types (MatReadError, IndexError, ...).
    raise raw_io.RawDataError(f"{path}: cannot read 'part_mask': {e}") from None
  if part_mask.ndim != 3 or part_mask.shape[2] < total:
    raise raw_io.RawDataError(f"{path}: part_mask of shape {part_mask.shape} does not hold "
                              f"(H, W, {total}) masks")
  raw_io.check_size(part_mask.shape[:2], size, path)
  return part_mask
