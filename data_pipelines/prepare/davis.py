"""Ref-DAVIS17: the YTVOS-style layout data_pipelines/davis.py reads, from the releases.

Reads (under the dataset root, in the layout ReferFormer's docs/data.md unzips to):
  davis_text_annotations/Davis17_annot1.txt, Davis17_annot1_full_video.txt (UTF-8) and
      Davis17_annot2.txt, Davis17_annot2_full_video.txt (latin-1): one expression per line,
      `<video> <object id> "<expression>"` (Khoreva et al., referring expressions for DAVIS)
  DAVIS/ImageSets/2017/{train,val}.txt, DAVIS/JPEGImages/480p/<seq>/*.jpg,
  DAVIS/Annotations_unsupervised/480p/<seq>/*.png   (DAVIS-2017-Unsupervised-trainval-480p.zip)
  DAVIS/davis_semantics.json   {seq: {"<object id>": category}} (DAVIS-2017_semantics-480p.zip)

Writes, when absent (else checks they agree), what ReferFormer's
tools/data/convert_davis_to_ytvos.py makes:
  meta_expressions/{train,valid}/meta_expressions.json
      per sequence, 4 expressions per object with consecutive exp_ids, objects in the order
      of their ids as strings, each object's in the order annot1 first-frame, annot1
      full-video, annot2 first-frame, annot2 full-video; "frames" the sorted JPEG stems
  {train,valid}/meta.json   objects 1..K of davis_semantics.json with their category
  {train,valid}/JPEGImages/<seq> and Annotations/<seq>: links to the DAVIS folders
      (ReferFormer moves the folders instead)
As ReferFormer does, the expression is the rest of the line with runs of spaces made one and
its quotes removed, and the video names the text files misspell are corrected.

Unlike ReferFormer, which zips each video's four lists (convert_davis_to_ytvos.py:194-203)
and so silently truncates or shifts them where they do not line up, each object's four
expressions are matched by object id; an object without exactly one line in each file is an
inconsistency, reported with its video, object and line numbers.
"""

import glob
import os

from data_pipelines import davis
from data_pipelines import raw_io
from data_pipelines import ytvos
from data_pipelines.prepare import plan as plan_lib

TEXT_DIR = "davis_text_annotations"
# In the order an object's four expressions take (davis.EXPRESSIONS_PER_OBJECT).
TEXT_FILES = (("Davis17_annot1.txt", "utf-8"), ("Davis17_annot1_full_video.txt", "utf-8"),
              ("Davis17_annot2.txt", "latin-1"), ("Davis17_annot2_full_video.txt", "latin-1"))
# The video names the text files misspell (ReferFormer convert_davis_to_ytvos.py:127-132).
VIDEO_NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale",
                    "motor-bike": "motorbike"}
# Our split: the DAVIS image set it comes from.
IMAGE_SETS = {"train": "train", "valid": "val"}
DAVIS_DIR = "DAVIS"
SEMANTICS = os.path.join(DAVIS_DIR, "davis_semantics.json")
_FRAMES = os.path.join("JPEGImages", "480p")
_MASKS = os.path.join("Annotations_unsupervised", "480p")
SOURCES = ("https://davischallenge.org/davis2017/code.html (DAVIS-2017-Unsupervised-trainval-"
           "480p.zip, DAVIS-2017_semantics-480p.zip) and the Ref-DAVIS17 text annotations")

# (video, object id) -> [(line number, expression)] of one text file.
Lines = dict[tuple[str, str], list[tuple[int, str]]]


def read_expressions(path: str, encoding: str, problems: list[str]) -> Lines:
  """Parses one annotator file; a malformed line is added to `problems` and left out."""
  try:
    text = raw_io.read_bytes(path).decode(encoding)
  except UnicodeDecodeError as e:
    raise raw_io.RawDataError(f"{path}: not {encoding} text: {e}") from None
  lines = {}
  for number, line in enumerate(text.splitlines(), start=1):
    tokens = line.split()
    if not tokens:
      continue
    expression = " ".join(tokens[2:])
    if (len(tokens) < 3 or not tokens[1].isdigit() or len(expression) < 3
        or expression[0] != '"' or expression[-1] != '"'):
      problems.append(f"{path} line {number}: not `<video> <object id> \"<expression>\"`: "
                      f"{line.strip()!r}")
      continue
    video = VIDEO_NAME_FIXES.get(tokens[0], tokens[0])
    lines.setdefault((video, tokens[1]), []).append((number, expression[1:-1]))
  return lines


def plan(root: str) -> plan_lib.Plan:
  """Derives the YTVOS-style layout of both splits from the releases under `root`."""
  result = plan_lib.Plan("davis")
  davis_root = os.path.join(root, DAVIS_DIR)
  text_paths = [os.path.join(root, TEXT_DIR, name) for name, _ in TEXT_FILES]
  for path in text_paths + [os.path.join(root, SEMANTICS)]:
    if not os.path.exists(path):
      raise plan_lib.PrepareError(f"missing file {path} (from {SOURCES})")
  files = [read_expressions(path, encoding, result.problems)
           for path, (_, encoding) in zip(text_paths, TEXT_FILES)]
  semantics = raw_io.load_json(os.path.join(root, SEMANTICS))
  result.read += [f"{path}: {sum(len(v) for v in lines.values())} expressions"
                  for path, lines in zip(text_paths, files)]
  result.read.append(f"{os.path.join(root, SEMANTICS)}: {len(semantics)} sequences")

  known = set()
  for split, image_set in IMAGE_SETS.items():
    sequences = davis.list_sequences(davis_root, image_set)
    known.update(sequences)
    result.read.append(f"{os.path.join(davis_root, 'ImageSets', '2017', image_set + '.txt')}: "
                       f"{len(sequences)} sequences")
    _plan_split(root, split, sequences, files, semantics, result)
  for video in sorted({video for lines in files for video, _ in lines} - known):
    result.problems.append(f"{TEXT_DIR}: video {video!r} is in neither DAVIS image set")
  return result


def _plan_split(root: str, split: str, sequences: list[str], files: list[Lines],
                semantics: dict, result: plan_lib.Plan) -> None:
  """Adds one split's meta_expressions.json, meta.json and folder links to `result`."""
  davis_root = os.path.join(root, DAVIS_DIR)
  videos, objects = {}, {}
  for seq in sequences:
    frame_dir = os.path.join(davis_root, _FRAMES, seq)
    frames = sorted(os.path.splitext(os.path.basename(path))[0]
                    for path in glob.glob(os.path.join(glob.escape(frame_dir), "*.jpg")))
    categories = semantics.get(seq)
    if not frames or not isinstance(categories, dict):
      result.problems.append(f"{split} {seq}: no JPEGs in {frame_dir}" if not frames else
                             f"{split} {seq}: not in {SEMANTICS}")
      continue
    if sorted(categories, key=str) != sorted(str(k) for k in range(1, len(categories) + 1)):
      result.problems.append(f"{split} {seq}: the objects of {SEMANTICS} are not 1..K: "
                             f"{sorted(categories)}")
      continue
    objects[seq] = {"objects": {str(k): {"category": categories[str(k)]}
                                for k in range(1, len(categories) + 1)}}
    expressions = _expressions(split, seq, files, objects[seq]["objects"], result.problems)
    if expressions:
      videos[seq] = {"expressions": expressions, "frames": frames}
    for folder, source in (("JPEGImages", _FRAMES), ("Annotations", _MASKS)):
      result.outputs.append(plan_lib.Output(
          os.path.join(root, split, folder, seq), f"a link to DAVIS/{source}/{seq}",
          link=os.path.join(davis_root, source, seq)))
  count = sum(len(v["expressions"]) for v in videos.values())
  result.outputs += [
      plan_lib.Output(ytvos.meta_expressions_path(root, split),
                      f"{count} expressions of {len(videos)} sequences",
                      value={"videos": videos}),
      plan_lib.Output(os.path.join(root, split, "meta.json"),
                      f"the objects of {len(objects)} sequences", value={"videos": objects})]


def _expressions(split: str, seq: str, files: list[Lines], objects: dict,
                 problems: list[str]) -> dict[str, dict[str, str]]:
  """The sequence's {exp_id: {"exp", "obj_id"}}; mismatched objects go to `problems`."""
  obj_ids = sorted({obj for lines in files for video, obj in lines if video == seq})
  if not obj_ids:
    problems.append(f"{split} {seq}: no expression in {TEXT_DIR}")
  expressions = {}
  for obj_id in obj_ids:
    found = [lines.get((seq, obj_id), []) for lines in files]
    if any(len(entries) != 1 for entries in found):
      problems.append(f"{split} {seq} object {obj_id}: " + ", ".join(
          f"{len(entries)} lines in {name}" + (f" ({', '.join(str(n) for n, _ in entries)})"
                                                if entries else "")
          for (name, _), entries in zip(TEXT_FILES, found)))
    elif obj_id not in objects:
      problems.append(f"{split} {seq} object {obj_id}: not an object of {SEMANTICS} "
                      f"({sorted(objects)})")
    else:
      for entries in found:
        expressions[str(len(expressions))] = {"exp": entries[0][1], "obj_id": obj_id}
  return expressions

