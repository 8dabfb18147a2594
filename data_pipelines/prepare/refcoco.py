"""RefCOCO/+/g: checks the REFER release (and ReferFormer's conversion, if present).

data_pipelines/refcoco.py reads REFER's `refs(<split_by>).p` + `instances.json` directly, so
nothing needs writing. This counts each split's sentences, objects and images, checks that
every image file is under coco/train2014, and where ReferFormer's
`instances_<partition>_<split>.json` exists too, checks that it gives the same entries.
"""

import os

from data_pipelines import raw_io
from data_pipelines import refcoco
from data_pipelines.prepare import plan as plan_lib

SOURCE = "https://github.com/lichengunc/refer (refcoco.zip, refcoco+.zip, refcocog.zip)"
# The entry fields data_pipelines/refcoco.py reads.
_IMAGE_FIELDS = ("file_name", "height", "width", "original_id", "caption")
_ANNOTATION_FIELDS = ("segmentation", "category_id", "original_id")
_EXAMPLES = 3


def plan(root: str) -> plan_lib.Plan:
  """Reads every split whose REFER files exist; there is nothing to write."""
  result = plan_lib.Plan("refcoco")
  found = False
  for split in refcoco.SPLITS:
    refs_path, instances_path = refcoco.refer_paths(root, split)
    if not (os.path.exists(refs_path) and os.path.exists(instances_path)):
      continue
    found = True
    index = raw_io.load_index((refs_path, instances_path), refcoco.refer_index,
                              split.split("/")[1])
    images = {image["file_name"] for image, _ in index.values()}
    objects = {annotation["original_id"] for _, annotation in index.values()}
    result.read.append(f"{refs_path} + {instances_path}: {split}: {len(index)} sentences of "
                       f"{len(objects)} objects in {len(images)} images")
    missing = sorted(name for name in images
                     if not os.path.exists(os.path.join(root, refcoco.IMAGE_DIR, name)))
    if missing:
      result.problems.append(f"{split}: {len(missing)} images are not in "
                             f"{os.path.join(root, refcoco.IMAGE_DIR)}, e.g. "
                             f"{missing[:_EXAMPLES]}")
    converted = refcoco.converted_path(root, split)
    if os.path.exists(converted):
      difference = _difference(raw_io.load_json_index(converted, refcoco.converted_index),
                               index)
      if difference:
        result.problems.append(f"{converted} differs from the REFER files: {difference}")
      else:
        result.notes.append(f"{converted} agrees with the REFER files")
  if not found:
    raise plan_lib.PrepareError(f"no REFER release under {os.path.join(root, refcoco.COCO_DIR)}"
                                f" (<ds>/refs(<split_by>).p and <ds>/instances.json, from "
                                f"{SOURCE})")
  result.notes.append("nothing to write: data_pipelines/refcoco.py reads the REFER files")
  return result


def _difference(converted: dict, derived: dict) -> str:
  """How ReferFormer's entries differ from the REFER ones on the fields the reader reads."""
  if set(converted) != set(derived):
    return f"{len(converted)} entries, {len(derived)} from the REFER files"
  differing = []
  for entry_id, (image, annotation) in derived.items():
    other_image, other_annotation = converted[entry_id]
    if (any(other_image.get(k) != image[k] for k in _IMAGE_FIELDS) or other_annotation is None
        or any(other_annotation.get(k) != annotation[k] for k in _ANNOTATION_FIELDS)):
      differing.append(entry_id)
  if differing:
    return f"{len(differing)} entries differ, e.g. {sorted(differing, key=int)[:_EXAMPLES]}"
  return ""
