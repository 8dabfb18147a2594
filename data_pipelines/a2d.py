"""Reader of A2D-Sentences in the standard (MTTR) single-frame sample protocol.

Layout (MTTR datasets/a2d_sentences/a2d_sentences_dataset.py):
  <root>/Release/CLIPS320/<vid>.mp4 (or Release/clips320H/<vid>.mp4)
  <root>/text_annotations/a2d_annotation_with_instances/<vid>/<%05d>.h5   1-based frame number
  <root>/a2d_sentences_single_frame_{train,test}_annotations.json
      a list of [query, video_id, frame_idx (1-based), instance_id]
The sample lists are MTTR's; `python -m data_pipelines.prepare --dataset a2d` derives them
from the official release when they are absent (data_pipelines/prepare/a2d.py).

Each .h5 is one annotated frame in MATLAB v7.3 layout: `reMask` (N, W, H) uint8, or (W, H)
when N = 1 (MATLAB stores arrays column-major, so h5py sees the image transposed); `reBBox`
(4, N) float64 rows x1, y1, x2, y2; `instance`, the N instance ids (float64, any shape with
N elements), which A2D-Sentences added to the original A2D `Release/Annotations/mat` files.

One record per video that has samples (videos without samples are skipped). The mp4 is
decoded once here with PyAV (the library torchvision's read_video uses) and every frame is
re-encoded as a JPEG of quality 95 by PIL (4:2:0 chroma subsampling, PIL's default); frame
names are the 1-based frame numbers, "00001", ...

Masks: each annotated frame a sample names becomes an id map with pixel = instance_id + 1
(A2D instance ids start at 0). The h5 masks are per instance and may overlap; a frame then
carries several id maps, each overlap-free (instances are placed in file order into the first
map they do not overlap), so `mask_frames` repeats the frame.

Expressions: one per sample, in file order, exp_id "<frame_idx>_<instance_id>_<n>" (n counts
repeats of that frame and instance from 0), obj_ids (instance_id + 1,); meta
"frame/<exp_id>" names the sample's annotated frame. The query text is kept as written.
"""

import collections
import io
import os

import av
import h5py
import numpy as np
from PIL import Image

from data_pipelines import raw
from data_pipelines import raw_io

DATASET = "a2d"
SPLITS = ("train", "test")
JPEG_QUALITY = 95
VIDEO_DIRS = (os.path.join("Release", "CLIPS320"), os.path.join("Release", "clips320H"))
MASK_DIR = os.path.join("text_annotations", "a2d_annotation_with_instances")


def samples_path(root: str, split: str) -> str:
  return os.path.join(root, f"a2d_sentences_single_frame_{split}_annotations.json")


def list_videos(root: str, split: str) -> list[str]:
  """The sorted ids of the videos that have samples in `split`."""
  return sorted(_samples(root, split))


def read_video(root: str, split: str, video_id: str) -> raw.VideoRecord:
  """Decodes one A2D clip and reads the masks and expressions of its samples."""
  where = f"{DATASET}/{split}/{video_id}"
  samples = _samples(root, split).get(video_id)
  if not samples:
    raise raw_io.RawDataError(f"{samples_path(root, split)}: no samples for video {video_id!r}")
  frames, height, width = _decode_video(_video_path(root, video_id))
  frame_names = tuple(f"{index + 1:05d}" for index in range(len(frames)))
  mask_frames, masks = _sample_masks(root, video_id, samples, frame_names, (height, width),
                                     where)
  expressions, meta = _sample_expressions(samples, where)
  return raw.VideoRecord(
      dataset=DATASET, split=split, video_id=video_id,
      frame_names=frame_names, frames=frames, frame_format="jpeg",
      height=height, width=width, mask_frames=mask_frames, masks=masks,
      expressions=expressions, meta=meta)


def _samples(root: str, split: str) -> dict[str, list[tuple[str, int, int]]]:
  raw_io.check_split(DATASET, split, SPLITS)
  path = samples_path(root, split)
  if not os.path.exists(path):
    raise raw_io.RawDataError(
        f"missing file {path}: MTTR's sample list; derive it from the official A2D-Sentences "
        f"release with `python -m data_pipelines.prepare --dataset a2d --raw {root}`")
  return raw_io.load_json_index(path, _samples_by_video)


def _sample_expressions(samples: list[tuple[str, int, int]],
                        where: str) -> tuple[tuple[raw.Expression, ...], dict[str, str]]:
  """One expression per sample, and meta naming each one's annotated frame."""
  expressions, meta = [], {}
  repeats = collections.Counter()
  for text, frame_idx, instance_id in samples:
    exp_id = f"{frame_idx}_{instance_id}_{repeats[frame_idx, instance_id]}"
    repeats[frame_idx, instance_id] += 1
    expressions.append(raw.Expression(
        exp_id=exp_id, text=raw_io.check_text(text, f"{where} sample {exp_id}"),
        obj_ids=(instance_id + 1,)))
    meta[raw.anchor_key(exp_id)] = f"{frame_idx:05d}"
  return tuple(expressions), meta


def _sample_masks(root: str, video_id: str, samples: list[tuple[str, int, int]],
                  frame_names: tuple[str, ...], size: tuple[int, int],
                  where: str) -> tuple[tuple[str, ...], tuple[bytes, ...]]:
  """The id maps of every frame a sample names: (mask_frames, masks)."""
  mask_frames, masks = [], []
  for frame_idx in sorted({frame_idx for _, frame_idx, _ in samples}):
    path = os.path.join(root, MASK_DIR, video_id, f"{frame_idx:05d}.h5")
    if frame_idx > len(frame_names):
      raise raw_io.RawDataError(f"{path}: frame {frame_idx} is past the {len(frame_names)} "
                                f"frames of {where}")
    instance_ids, instance_masks = read_instances(path)
    raw_io.check_size(instance_masks.shape[1:], size, path)
    for _, sample_frame, instance_id in samples:
      if sample_frame == frame_idx and instance_id not in instance_ids:
        raise raw_io.RawDataError(f"{path}: unknown object id: instance {instance_id} of a "
                                  f"{where} sample is not in the frame's {instance_ids}")
    for id_map in overlap_free_id_maps(instance_ids, instance_masks, path):
      mask_frames.append(frame_names[frame_idx - 1])
      masks.append(raw_io.encode_id_map(id_map))
  return tuple(mask_frames), tuple(masks)


def _samples_by_video(samples, path: str) -> dict[str, list[tuple[str, int, int]]]:
  """Groups the sample list by video: {video_id: [(query, frame_idx, instance_id), ...]}."""
  if not isinstance(samples, list):
    raise raw_io.RawDataError(f"{path}: expected a list of samples")
  by_video = collections.defaultdict(list)
  for index, sample in enumerate(samples):
    if (not isinstance(sample, list) or len(sample) != 4 or not isinstance(sample[1], str)
        or not all(isinstance(x, int) and x >= 0 for x in sample[2:])):
      raise raw_io.RawDataError(f"{path}: sample {index} is not [query, video_id, frame_idx, "
                                f"instance_id]: {sample!r}")
    text, video_id, frame_idx, instance_id = sample
    by_video[video_id].append((text, frame_idx, instance_id))
  return dict(by_video)


def _video_path(root: str, video_id: str) -> str:
  paths = [os.path.join(root, folder, f"{video_id}.mp4") for folder in VIDEO_DIRS]
  for path in paths:
    if os.path.exists(path):
      return path
  raise raw_io.RawDataError(f"missing file {' or '.join(paths)}")


def _decode_video(path: str) -> tuple[tuple[bytes, ...], int, int]:
  """Decodes every frame of an mp4 and re-encodes each as a JPEG (quality JPEG_QUALITY)."""
  frames = []
  try:
    with av.open(path) as container:
      for frame in container.decode(video=0):
        buffer = io.BytesIO()
        Image.fromarray(frame.to_ndarray(format="rgb24")).save(
            buffer, format="JPEG", quality=JPEG_QUALITY)
        frames.append(buffer.getvalue())
        size = (frame.height, frame.width)
  except (av.error.FFmpegError, ValueError) as e:
    raise raw_io.RawDataError(f"{path}: cannot decode the video: {e}") from None
  if not frames:
    raise raw_io.RawDataError(f"{path}: the video has no frames")
  return tuple(frames), size[0], size[1]


def read_instance_ids(path: str) -> list[int]:
  """The `instance` ids of one annotated frame's .h5, in the file's order."""
  with _open_h5(path) as f:
    return _instance_ids(f, path)


def read_instances(path: str) -> tuple[list[int], np.ndarray]:
  """Reads the instance masks of one annotated frame.

  Returns:
    (instance_ids, masks): the h5 `instance` ids and their masks as (N, H, W) bool, the
    stored (W, H) / (N, W, H) `reMask` transposed back to the image's layout.
  """
  with _open_h5(path) as f:
    instance_ids = _instance_ids(f, path)
    masks = _dataset(f, "reMask", path)
  if masks.ndim == 2:
    masks = masks[np.newaxis]
  if masks.ndim != 3 or masks.shape[0] != len(instance_ids):
    raise raw_io.RawDataError(f"{path}: reMask of shape {masks.shape} does not hold the "
                              f"{len(instance_ids)} instances {instance_ids}")
  return instance_ids, np.transpose(masks, (0, 2, 1)) > 0


def read_boxes(path: str) -> np.ndarray:
  """The (N, 4) float64 boxes x1, y1, x2, y2 of `reBBox` (stored (4, N)), one per instance."""
  with _open_h5(path) as f:
    boxes = _dataset(f, "reBBox", path)
  if boxes.ndim == 1:
    boxes = boxes[:, np.newaxis]
  if boxes.ndim != 2 or boxes.shape[0] != 4:
    raise raw_io.RawDataError(f"{path}: reBBox of shape {boxes.shape} is not (4, N)")
  return boxes.T.astype(np.float64)


def _open_h5(path: str) -> h5py.File:
  if not os.path.exists(path):
    raise raw_io.RawDataError(f"missing file {path}")
  try:
    return h5py.File(path, "r")
  except OSError as e:
    raise raw_io.RawDataError(f"{path}: cannot open as HDF5 (MATLAB v7.3): {e}") from None


def _instance_ids(f: h5py.File, path: str) -> list[int]:
  if "instance" not in f:
    raise raw_io.RawDataError(
        f"{path}: no 'instance' dataset (found {sorted(f)}): an original A2D "
        f"Release/Annotations/mat file has no instance ids; A2D-Sentences' "
        f"{MASK_DIR}/<vid>/<frame>.h5 files add them")
  values = _dataset(f, "instance", path).reshape(-1)
  if not np.all(values == np.round(values)):
    raise raw_io.RawDataError(f"{path}: instance ids {values.tolist()} are not integers")
  return [int(x) for x in values]


def _dataset(f: h5py.File, name: str, path: str) -> np.ndarray:
  try:
    return np.asarray(f[name])
  except (KeyError, OSError) as e:
    raise raw_io.RawDataError(f"{path}: cannot read {name}: {e}") from None


def overlap_free_id_maps(instance_ids: list[int], masks: np.ndarray,
                         path: str) -> list[np.ndarray]:
  """Paints instance masks (N, H, W) into as few overlap-free (H, W) uint8 id maps as needed.

  Pixel = instance_id + 1; each instance goes, in order, into the first map where it
  overlaps no earlier instance. Returns at least one (possibly empty) map.
  """
  id_maps = []
  for instance_id, mask in zip(instance_ids, masks):
    if instance_id + 1 > 255:
      raise raw_io.RawDataError(f"{path}: instance id {instance_id} does not fit a uint8 id map")
    target = next((m for m in id_maps if not np.any(m[mask])), None)
    if target is None:
      target = np.zeros(masks.shape[1:], np.uint8)
      id_maps.append(target)
    target[mask] = instance_id + 1
  return id_maps or [np.zeros(masks.shape[1:], np.uint8)]
