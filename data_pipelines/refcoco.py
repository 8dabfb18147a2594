"""Reader of RefCOCO, RefCOCO+ and RefCOCOg in ReferFormer's COCO-style conversion.

Layout (vdit-original.md §6; ReferFormer tools/data/convert_refexp_to_coco.py):
  <root>/coco/train2014/<file_name>.jpg
  <root>/coco/<ds>/instances_<ds>_<split>.json   ds in refcoco, refcoco+, refcocog
      images: one entry per referring sentence {"id", "file_name", "height", "width",
        "caption", "original_id" (the COCO image id), ...}
      annotations: exactly one per image entry {"image_id", "segmentation" (polygons or
        RLE), "category_id", "original_id" (the COCO annotation id), ...}

Splits are "<ds>/<split>", e.g. "refcoco+/val". One single-frame record per image entry:
video_id = the entry id, the frame is the COCO JPEG as it is on disk (named by its file
stem; some COCO JPEGs are grayscale or CMYK), the id map has id 1 on the annotation's mask
as pycocotools renders it, and the one expression (exp_id = the entry id) is the caption.
meta keeps "coco_image_id", "coco_ann_id" and "category_id".
"""

import os

import numpy as np
from pycocotools import mask as mask_utils

from data_pipelines import raw
from data_pipelines import raw_io

DATASET = "refcoco"
SUBSETS = ("refcoco", "refcoco+", "refcocog")
SPLITS = tuple(f"{subset}/{split}" for subset in SUBSETS for split in ("train", "val"))
IMAGE_DIR = os.path.join("coco", "train2014")
OBJECT_ID = 1
_IMAGE_KEYS = ("id", "file_name", "height", "width")


def annotations_path(root: str, split: str) -> str:
  raw_io.check_split(DATASET, split, SPLITS)
  subset, name = split.split("/")
  return os.path.join(root, "coco", subset, f"instances_{subset}_{name}.json")


def list_videos(root: str, split: str) -> list[str]:
  """The sorted image-entry ids (as strings) of `split`."""
  return sorted(raw_io.load_json_index(annotations_path(root, split), _index))


def read_video(root: str, split: str, video_id: str) -> raw.VideoRecord:
  """Reads one image entry as a single-frame record."""
  path = annotations_path(root, split)
  entry = raw_io.load_json_index(path, _index).get(video_id)
  if entry is None:
    raise raw_io.RawDataError(f"{path}: no image entry {video_id!r}")
  image, annotation = entry
  where = f"{path}: image {video_id}"
  if annotation is None:
    raise raw_io.RawDataError(f"{where} has no annotation")
  frames, height, width = raw_io.read_frames(
      [os.path.join(root, IMAGE_DIR, image["file_name"])], "jpeg", where)
  raw_io.check_size((height, width), (image["height"], image["width"]),
                    os.path.join(root, IMAGE_DIR, image["file_name"]))
  id_map = render_mask(annotation.get("segmentation"), height, width, where) * OBJECT_ID
  frame_name = os.path.splitext(os.path.basename(image["file_name"]))[0]
  return raw.VideoRecord(
      dataset=DATASET, split=split, video_id=video_id,
      frame_names=(frame_name,), frames=frames, frame_format="jpeg",
      height=height, width=width,
      mask_frames=(frame_name,), masks=(raw_io.encode_id_map(id_map),),
      expressions=(raw.Expression(exp_id=video_id,
                                  text=raw_io.check_text(image.get("caption"), where),
                                  obj_ids=(OBJECT_ID,)),),
      meta={"coco_image_id": str(image.get("original_id", "")),
            "coco_ann_id": str(annotation.get("original_id", "")),
            "category_id": str(annotation.get("category_id", ""))})


def render_mask(segmentation, height: int, width: int, where: str) -> np.ndarray:
  """Renders COCO polygons or RLE to a (H, W) uint8 {0, 1} mask with pycocotools."""
  try:
    rle = _to_rle(segmentation, height, width)
    mask = None if rle is None else mask_utils.decode(rle)
  except (TypeError, ValueError, IndexError, KeyError) as e:
    raise raw_io.RawDataError(f"{where}: malformed segmentation: {e}") from None
  if mask is None:
    raise raw_io.RawDataError(f"{where}: no polygon or RLE segmentation")
  raw_io.check_size(mask.shape, (height, width), where)
  return mask.astype(np.uint8)


def _to_rle(segmentation, height: int, width: int) -> dict | None:
  """One compressed RLE from polygons, uncompressed or compressed RLE; None if neither."""
  if isinstance(segmentation, list) and segmentation:
    return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
  counts = segmentation.get("counts") if isinstance(segmentation, dict) else None
  if isinstance(counts, list):
    return mask_utils.frPyObjects(segmentation, height, width)
  if isinstance(counts, (str, bytes)):
    return segmentation
  return None


def _index(data, path: str) -> dict[str, tuple[dict, dict]]:
  """{image entry id: (image entry, its one annotation or None)} of an annotation file."""
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    raise raw_io.RawDataError(f"{path}: no 'images' list")
  annotations = {}
  for annotation in data.get("annotations", []):
    image_id = str(annotation.get("image_id"))
    if image_id in annotations:
      raise raw_io.RawDataError(f"{path}: image {image_id} has more than one annotation")
    annotations[image_id] = annotation
  index = {}
  for image in data["images"]:
    image_id = str(image.get("id"))
    if not all(key in image for key in _IMAGE_KEYS):
      raise raw_io.RawDataError(f"{path}: image {image_id} lacks one of {_IMAGE_KEYS}")
    if image_id in index:
      raise raw_io.RawDataError(f"{path}: image id {image_id} is listed twice")
    index[image_id] = (image, annotations.get(image_id))
  return index
