"""Reader of RefCOCO, RefCOCO+ and RefCOCOg: the REFER release, or ReferFormer's conversion.

Splits are "<partition>/<split>":
  refcoco/{train,val,testA,testB}, refcoco+/{train,val,testA,testB}   (UNC's split)
  refcocog/{train,val,test}                                            (UMD's split)
  refcocog_google/{train,val}                                          (Google's split)
A split's `<split>` must equal a ref's "split" exactly (REFER's getRefIds matches substrings:
its "test" of refcoco is testA + testB, and there is no refcoco/test here).

Two layouts, under <root>/coco/ (images in <root>/coco/train2014/<file_name>):
  <ds>/refs(<split_by>).p and <ds>/instances.json, as the REFER release unzips
      (github.com/lichengunc/refer; ds refcoco, refcoco+, refcocog; split_by unc, umd,
      google). refs: a pickled list of refs {"ref_id", "ann_id", "image_id", "split",
      "sentences": [{"sent", "raw", "tokens", "sent_id"}], "file_name", ...}; a ref's
      "file_name" names no image file, so the image and mask come from the COCO annotation
      its "ann_id" names and that annotation's image. The text is "sent" (lower-cased,
      normalised), not "raw".
  <ds>/instances_<partition>_<split>.json, as ReferFormer's
      tools/data/convert_refexp_to_coco.py writes it: one image entry per sentence
      {"id", "file_name", "height", "width", "caption", "original_id"} and one annotation each
      {"image_id", "segmentation", "category_id", "original_id"}.
ReferFormer's file is read when it exists, else the REFER files. Both give the same entries:
the refs of the split in the pickle's order, each ref's sentences in order, numbered from 1.

One single-frame record per entry: video_id = the entry number, the frame is the COCO JPEG as
it is on disk (named by its file stem; some COCO JPEGs are grayscale or CMYK), the id map has
id 1 on the annotation's mask as pycocotools renders it, and the one expression (exp_id = the
entry number) is the sentence. meta keeps "coco_image_id", "coco_ann_id" and "category_id".
"""

import os

import numpy as np
from pycocotools import mask as mask_utils

from data_pipelines import raw
from data_pipelines import raw_io

DATASET = "refcoco"
# Partition: (REFER dataset folder, split_by, splits).
PARTITIONS = {
    "refcoco": ("refcoco", "unc", ("train", "val", "testA", "testB")),
    "refcoco+": ("refcoco+", "unc", ("train", "val", "testA", "testB")),
    "refcocog": ("refcocog", "umd", ("train", "val", "test")),
    "refcocog_google": ("refcocog", "google", ("train", "val")),
}
SPLITS = tuple(f"{partition}/{split}" for partition, (_, _, splits) in PARTITIONS.items()
               for split in splits)
COCO_DIR = "coco"
IMAGE_DIR = os.path.join(COCO_DIR, "train2014")
OBJECT_ID = 1
_IMAGE_KEYS = ("id", "file_name", "height", "width")


def converted_path(root: str, split: str) -> str:
  """ReferFormer's annotation file of `split`."""
  raw_io.check_split(DATASET, split, SPLITS)
  partition, name = split.split("/")
  folder = PARTITIONS[partition][0]
  return os.path.join(root, COCO_DIR, folder, f"instances_{partition}_{name}.json")


def refer_paths(root: str, split: str) -> tuple[str, str]:
  """The REFER release's (refs pickle, instances.json) of `split`."""
  raw_io.check_split(DATASET, split, SPLITS)
  folder, split_by, _ = PARTITIONS[split.split("/")[0]]
  return (os.path.join(root, COCO_DIR, folder, f"refs({split_by}).p"),
          os.path.join(root, COCO_DIR, folder, "instances.json"))


def entries(root: str, split: str) -> tuple[dict[str, tuple[dict, dict | None]], str]:
  """{entry id: (image entry, its annotation or None)} of `split`, and the file(s) read."""
  path = converted_path(root, split)
  if os.path.exists(path):
    return raw_io.load_json_index(path, converted_index), path
  refs_path, instances_path = refer_paths(root, split)
  if os.path.exists(refs_path) and os.path.exists(instances_path):
    return (raw_io.load_index((refs_path, instances_path), refer_index, split.split("/")[1]),
            f"{refs_path} + {instances_path}")
  raise raw_io.RawDataError(f"{split}: neither ReferFormer's {path} nor the REFER release's "
                            f"{refs_path} and {instances_path} exist")


def list_videos(root: str, split: str) -> list[str]:
  """The entry ids (as strings) of `split`, sorted."""
  return sorted(entries(root, split)[0])


def read_video(root: str, split: str, video_id: str) -> raw.VideoRecord:
  """Reads one entry (a sentence and its object) as a single-frame record."""
  index, source = entries(root, split)
  entry = index.get(video_id)
  if entry is None:
    raise raw_io.RawDataError(f"{source}: no entry {video_id!r} in {split}")
  image, annotation = entry
  where = f"{source}: {split} entry {video_id}"
  if annotation is None:
    raise raw_io.RawDataError(f"{where} has no annotation")
  image_path = os.path.join(root, IMAGE_DIR, image["file_name"])
  frames, height, width = raw_io.read_frames([image_path], "jpeg", where)
  raw_io.check_size((height, width), (image["height"], image["width"]), image_path)
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


def converted_index(data, path: str) -> dict[str, tuple[dict, dict | None]]:
  """{image entry id: (image entry, its one annotation or None)} of ReferFormer's file."""
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


def refer_index(refs_path: str, instances_path: str,
                split: str) -> dict[str, tuple[dict, dict]]:
  """The entries of one split of the REFER release, as ReferFormer's converter numbers them.

  Each sentence of each ref whose "split" is `split` (in the pickle's order) becomes entry
  k = 1, 2, ...: the image entry {"id": k, "file_name", "height", "width", "original_id",
  "caption": sentence "sent"} of the COCO image, and the annotation {"image_id": k,
  "segmentation", "category_id", "original_id"} of the COCO annotation the ref's "ann_id" names.
  """
  refs = raw_io.load_pickle(refs_path)
  instances = raw_io.load_json(instances_path)
  if not isinstance(refs, list):
    raise raw_io.RawDataError(f"{refs_path}: expected a list of refs, found "
                              f"{type(refs).__name__}")
  if not isinstance(instances, dict) or not all(
      isinstance(instances.get(key), list) for key in ("images", "annotations")):
    raise raw_io.RawDataError(f"{instances_path}: no 'images' and 'annotations' lists")
  images = {image.get("id"): image for image in instances["images"]}
  annotations = {annotation.get("id"): annotation for annotation in instances["annotations"]}
  index = {}
  for position, ref in enumerate(refs):
    if not isinstance(ref, dict) or ref.get("split") != split:
      continue
    where = f"{refs_path}: ref {ref.get('ref_id', position)}"
    annotation = annotations.get(ref.get("ann_id"))
    if annotation is None:
      raise raw_io.RawDataError(f"{where}: annotation {ref.get('ann_id')!r} is not in "
                                f"{instances_path}")
    image = images.get(annotation.get("image_id"))
    if image is None or annotation.get("image_id") != ref.get("image_id"):
      raise raw_io.RawDataError(f"{where}: image {ref.get('image_id')!r} is not the image "
                                f"{annotation.get('image_id')!r} of its annotation in "
                                f"{instances_path}")
    if not all(key in image for key in _IMAGE_KEYS):
      raise raw_io.RawDataError(f"{instances_path}: image {image.get('id')} lacks one of "
                                f"{_IMAGE_KEYS}")
    for sentence in ref.get("sentences") or ():
      entry = len(index) + 1
      index[str(entry)] = (
          {"id": entry, "file_name": image["file_name"], "height": image["height"],
           "width": image["width"], "original_id": image["id"],
           "caption": sentence.get("sent") if isinstance(sentence, dict) else None},
          {"image_id": entry, "segmentation": annotation.get("segmentation"),
           "category_id": annotation.get("category_id"), "original_id": annotation["id"]})
  return index
