"""The readers and preparations on real annotation files of the five datasets.

The files are excerpts of what the datasets' owners (or, where noted, third parties)
released, kept outside the repository: `<repository>/../shared/reference/real_layouts/`, or
the folder $VDIT_REAL_LAYOUTS names. Each test copies what it needs into a scratch dataset
root, adding synthetic frames or masks only where the excerpts have none, and checks the
records against the real files read independently (json, csv, a plain `split`, h5py,
scipy.io, pycocotools). Without the folder the tests are skipped.
"""

import csv
import io
import json
import os
import pickle
import re
import shutil

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from data_pipelines import a2d
from data_pipelines import davis
from data_pipelines import jhmdb
from data_pipelines import prepare
from data_pipelines import raw_io
from data_pipelines import refcoco
from data_pipelines import ytvos
from data_pipelines.prepare import a2d as prepare_a2d
from data_pipelines.prepare import plan as plan_lib

_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_LAYOUTS = os.environ.get("VDIT_REAL_LAYOUTS") or os.path.join(
    _REPOSITORY, "..", "shared", "reference", "real_layouts")


@pytest.fixture(scope="module")
def real():
  if not os.path.isdir(REAL_LAYOUTS):
    pytest.skip(f"no real annotation excerpts at {os.path.normpath(REAL_LAYOUTS)} (set "
                f"VDIT_REAL_LAYOUTS to the shared reference/real_layouts folder)")
  return REAL_LAYOUTS


def _json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _put(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _image(size, fmt, value=90):
  buffer = io.BytesIO()
  Image.fromarray(np.full(size + (3,), value, np.uint8)).save(buffer, format=fmt)
  return buffer.getvalue()


def _copy(source, target):
  os.makedirs(os.path.dirname(target), exist_ok=True)
  shutil.copyfile(source, target)


# Ref-YouTube-VOS ---------------------------------------------------------------------------


def test_ytvos_valid_excerpt(real, tmp_path):
  """Frame lists that start late, skip frames or step by 3; expressions without obj_id."""
  source = os.path.join(real, "ref_youtube_vos", "valid_meta_expressions.OnlineRefer.excerpt.json")
  videos = _json(source)["videos"]
  urvos = _json(os.path.join(real, "ref_youtube_vos",
                             "valid_meta_expressions.URVOS_original_format.skynbe.excerpt.json"))
  root = str(tmp_path)
  _copy(source, ytvos.meta_expressions_path(root, "valid"))
  _put(ytvos.meta_expressions_path(root, "test"), b'{"videos": {}}')
  for vid, entry in videos.items():
    for frame in entry["frames"]:
      _put(os.path.join(root, "valid", "JPEGImages", vid, f"{frame}.jpg"), _image((8, 8), "JPEG"))
  assert {videos["03deb7ad95"]["frames"][0], videos["8aa47fac99"]["frames"][1]} == {"00110",
                                                                                    "00003"}
  assert ytvos.list_videos(root, "valid") == sorted(videos)
  for vid, entry in videos.items():
    record = ytvos.read_video(root, "valid", vid)
    assert record.frame_names == tuple(entry["frames"]) and record.masks == ()
    assert [(e.exp_id, e.text, e.obj_ids) for e in record.expressions] == [
        (str(k), entry["expressions"][str(k)]["exp"], ()) for k in range(len(entry["expressions"]))]
    # The competition file lists each object's full-video expressions, objects in id order.
    objects = urvos["videos"][vid]["objects"]
    assert [e.text for e in record.expressions] == [
        text for obj_id in sorted(objects, key=int) for text in objects[obj_id]["expressions"]]


def test_ytvos_urvos_original_layout_is_refused(real, tmp_path):
  root = str(tmp_path)
  source = os.path.join(real, "ref_youtube_vos",
                        "valid_meta_expressions.URVOS_original_format.skynbe.excerpt.json")
  _copy(source, ytvos.meta_expressions_path(root, "valid"))
  _put(ytvos.meta_expressions_path(root, "test"), b'{"videos": {}}')
  vid = ytvos.list_videos(root, "valid")[0]
  with pytest.raises(raw_io.RawDataError, match=f"{vid} lists 'objects', not 'expressions' and "
                                                f"'frames': this is URVOS's original"):
    ytvos.read_video(root, "valid", vid)


# A2D-Sentences -----------------------------------------------------------------------------


def _a2d(real, name):
  return os.path.join(real, "a2d_sentences", name)


def test_a2d_release_text_files(real):
  """Odd instance ids and queries kept as written; the header and the last line."""
  path = _a2d(real, "a2d_annotation.excerpt.txt")
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  rows = prepare_a2d.read_sentences(path)
  # No quotes nor commas in queries, so a plain split reads the release as MTTR's pandas does.
  assert [row[1:] for row in rows] == [tuple(line.split(",", 2)) for line in lines[1:]]
  assert [row[0] for row in rows] == list(range(2, len(lines) + 1))
  written = {(vid, instance): query for _, vid, instance, query in rows}
  assert written["T6bNPuKV-wY", "1 (copy)"] == "bird standing in the beach"
  assert written["-EKuFGo77JM", "1"] == " green ball is on the floor"
  assert written["-2GEt8vi2RA", "0"] == "a car is flying "
  assert written["0VFPCin4ENA", "0"] == "a  black and white cat is eating food"
  assert written["-0cOo0cRVZU", "1"] == "Instructor standing on the sideline"
  assert [instance for _, vid, instance, _ in rows if vid == "AMRIatLZjz8"][:4] == [
      "0", "1", "10", "11"]
  assert [prepare_a2d.instance_number(i) for i in ("1 (copy)", "10", "0")] == [None, 10, 0]

  missed_path = _a2d(real, "a2d_missed_videos.txt")
  with open(missed_path, "rb") as f:
    data = f.read()
  assert not data.endswith(b"\n")
  assert prepare_a2d.read_missed(missed_path) == set(data.decode().split("\n"))
  assert len(prepare_a2d.read_missed(missed_path)) == 28

  videoset_path = _a2d(real, "videoset.excerpt.csv")
  usage, header = prepare_a2d.read_videoset(videoset_path)
  with open(videoset_path, encoding="utf-8") as f:
    table = [line.split(",") for line in f.read().splitlines()]
  assert header and table[0][0] == "VID"
  assert usage == {row[0]: int(row[8]) for row in table[1:]}
  assert {vid for vid, u in usage.items() if u == 1} == {"-4KMQsUaSAQ", "AMRIatLZjz8"}


def _a2d_h5(path, instance_ids, size):
  """A2D-Sentences .h5 twin: one square per instance, in the .mat files' MATLAB layout."""
  masks = np.zeros((len(instance_ids), size[1], size[0]), np.uint8)  # (N, W, H)
  boxes = []
  for k, _ in enumerate(instance_ids):
    masks[k, 4 * k + 1:4 * k + 4, 2:6] = 1
    boxes.append([4 * k + 1.0, 2.0, 4 * k + 4.0, 6.0])
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, "w") as f:
    f["reMask"] = masks[0] if len(instance_ids) == 1 else masks
    f["reBBox"] = np.asarray(boxes).T
    f["instance"] = np.asarray(instance_ids, np.float64)[:, np.newaxis]


def test_a2d_protocol_on_the_release_text_files(real, tmp_path, capsys):
  """MTTR's protocol on the real rows, with .h5 twins: frame 10 holds every numbered
  instance of the video, frame 20 all but the first."""
  root = str(tmp_path)
  _copy(_a2d(real, "videoset.excerpt.csv"), os.path.join(root, prepare_a2d.VIDEOSET))
  _copy(_a2d(real, "a2d_annotation.excerpt.txt"), os.path.join(root, prepare_a2d.SENTENCES))
  _copy(_a2d(real, "a2d_missed_videos.txt"), os.path.join(root, prepare_a2d.MISSED))
  usage, _ = prepare_a2d.read_videoset(os.path.join(root, prepare_a2d.VIDEOSET))
  rows = prepare_a2d.read_sentences(os.path.join(root, prepare_a2d.SENTENCES))
  size = (24, 64)
  listed = {}
  for _, vid, instance, _ in rows:
    if vid in usage and instance.isdigit():
      listed.setdefault(vid, []).append(int(instance))
  for vid, ids in listed.items():
    _a2d_h5(os.path.join(root, a2d.MASK_DIR, vid, "00010.h5"), ids, size)
    _a2d_h5(os.path.join(root, a2d.MASK_DIR, vid, "00020.h5"), ids[1:] or ids, size)

  unlisted = [number for number, vid, _, _ in rows if vid not in usage]
  with pytest.raises(plan_lib.PrepareError, match=f"{len(unlisted)} inconsistencies"):
    prepare.prepare("a2d", root)
  prepare.prepare("a2d", root, skip_mismatched=True)
  report = capsys.readouterr().out
  assert f"skipped {len(unlisted)} inconsistent items" in report
  assert "line 46: instance id '1 (copy)' of video T6bNPuKV-wY" in report

  expected = {"train": [], "test": []}
  for _, vid, instance, query in rows:  # MTTR a2d_sentences_dataset.py:62-91, by hand.
    if vid not in usage or not instance.isdigit():
      continue
    frames = [10, 20] if len(listed[vid]) == 1 or int(instance) != listed[vid][0] else [10]
    expected["test" if usage[vid] else "train"] += [
        [query.lower(), vid, frame, int(instance)] for frame in frames]
  for split in ("train", "test"):
    assert _json(a2d.samples_path(root, split)) == expected[split]
  assert ["instructor standing on the sideline", "-0cOo0cRVZU", 10, 1] in expected["train"]

  ours = _json(os.path.join(root, prepare_a2d.GT_NAME))
  theirs = _json(_a2d(real, "a2d_sentences_test_annotations_in_coco_format.excerpt.json"))
  assert [i["id"] for i in ours["images"]] == [
      f"v_{vid}_f_{frame}_i_{instance}" for _, vid, frame, instance in expected["test"]]
  assert "v_AMRIatLZjz8_f_10_i_10" in [i["id"] for i in ours["images"]]
  _check_same_coco_layout(ours, theirs)
  assert [a["id"] for a in ours["annotations"]] == list(range(1, len(ours["images"]) + 1))
  with open(os.path.join(root, prepare_a2d.GT_NAME), "rb") as f:
    assert f.read() == json.dumps(ours).encode()
  with open(_a2d(real, "a2d_sentences_test_annotations_in_coco_format.excerpt.json"), "rb") as f:
    assert f.read() == json.dumps(theirs).encode()  # Both: json.dumps defaults, one line.


def _check_same_coco_layout(ours, theirs):
  """The real (MTTR-generated) COCO ground truth and ours: same keys, order and types."""
  assert list(ours) == list(theirs) and ours["categories"] == theirs["categories"]
  pattern = re.compile(r"v_[-\w]{11}_f_[1-9]\d*_i_\d+")
  for data in (ours, theirs):
    assert [a["image_id"] for a in data["annotations"]] == [i["id"] for i in data["images"]]
    ids = [a["id"] for a in data["annotations"]]
    assert ids == sorted(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    for image, annotation in zip(data["images"], data["annotations"]):
      assert list(image) == list(theirs["images"][0]) and pattern.fullmatch(image["id"])
      assert list(annotation) == list(theirs["annotations"][0])
      assert list(annotation["segmentation"]) == ["size", "counts"]
      assert annotation["segmentation"]["size"] == [image["height"], image["width"]]
      assert isinstance(annotation["area"], float) and annotation["iscrowd"] == 0
      assert annotation["area"] == float(mask_utils.area(annotation["segmentation"]))
      assert [type(v) for v in annotation["bbox"]] == [float] * 4


def _mat_layout(real, tmp_path):
  """A dataset root with the real texts and the original A2D .mat file, no .h5 folder."""
  root = str(tmp_path / "a2d")
  _copy(_a2d(real, "videoset.excerpt.csv"), os.path.join(root, prepare_a2d.VIDEOSET))
  _copy(_a2d(real, "a2d_annotation.excerpt.txt"), os.path.join(root, prepare_a2d.SENTENCES))
  _copy(_a2d(real, "a2d_missed_videos.txt"), os.path.join(root, prepare_a2d.MISSED))
  mat = os.path.join(root, prepare_a2d.MAT_DIR, "-8FLF-osZmA", "00040.mat")
  _copy(_a2d(real, "Release_Annotations_mat/-8FLF-osZmA/00040.mat"), mat)
  return root, mat


def test_a2d_original_mat_files_are_not_the_sentences_h5(real, tmp_path):
  root, mat = _mat_layout(real, tmp_path)
  with pytest.raises(plan_lib.PrepareError, match=re.escape(
      f"missing folder {os.path.join(root, a2d.MASK_DIR)}: unzip A2D-Sentences' "
      f"a2d_annotation_with_instances.zip")):
    prepare.prepare("a2d", root)
  with pytest.raises(raw_io.RawDataError, match=re.escape(
      f"{mat}: no 'instance' dataset (found ['#refs#', 'class', 'id', 'reBBox', 'reMask', "
      f"'reS_col', 'reS_id']): an original A2D Release/Annotations/mat file")):
    a2d.read_instances(mat)


@pytest.mark.parametrize("instance_shape", ["column", "row"])
def test_a2d_mat_layout_where_the_reader_uses_it(real, tmp_path, instance_shape):
  """The real file's (N, W, H) reMask and (4, N) reBBox, with an `instance` dataset added
  (float64 like its `id`) as A2D-Sentences adds one: masks come out (N, H, W) and line up
  with the boxes."""
  _, mat = _mat_layout(real, tmp_path)
  h5 = str(tmp_path / "00040.h5")
  shutil.copyfile(mat, h5)
  with h5py.File(h5, "r+") as f:
    remask, boxes, codes = np.asarray(f["reMask"]), np.asarray(f["reBBox"]), f["id"]
    assert remask.shape == (4, 580, 320) and boxes.shape == (4, 4)
    assert codes.dtype == np.float64 and codes.shape == (1, 4)
    ids = np.arange(4, dtype=np.float64)
    f["instance"] = ids[:, None] if instance_shape == "column" else ids[None, :]
  instance_ids, masks = a2d.read_instances(h5)
  assert instance_ids == [0, 1, 2, 3] and masks.shape == (4, 320, 580)
  for mask, (x1, y1, x2, y2) in zip(masks, boxes.T):
    ys, xs = np.nonzero(mask)
    assert abs(xs.min() - x1) <= 1 and abs(ys.min() - y1) <= 1  # x2, y2: past the last pixel.
    assert abs(xs.max() + 1 - x2) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
  np.testing.assert_array_equal(a2d.read_boxes(h5), boxes.T)
  assert len(a2d.overlap_free_id_maps(instance_ids, masks, h5)) == 1  # They do not overlap.

  gt = prepare_a2d.coco_ground_truth([["q", "-8FLF-osZmA", 40, 2]], [(h5, 2)])
  (annotation,) = gt["annotations"]
  assert gt["images"] == [{"id": "v_-8FLF-osZmA_f_40_i_2", "height": 320, "width": 580}]
  np.testing.assert_array_equal(mask_utils.decode(annotation["segmentation"]), remask[2].T)
  assert annotation["area"] == float(remask[2].sum())
  x1, y1, x2, y2 = boxes[:, 2]
  assert annotation["bbox"] == [x1, y1, x2 - x1, y2 - y1]


def test_a2d_fork_sample_list_is_refused(real, tmp_path):
  root = str(tmp_path)
  _copy(_a2d(real, "FORK_MODIFIED_LoSh_a2d_sentences_single_frame_test_annotations.excerpt.json"),
        a2d.samples_path(root, "test"))
  with pytest.raises(raw_io.RawDataError,
                     match=r"sample 0 is not \[query, video_id, frame_idx, instance_id\]"):
    a2d.list_videos(root, "test")


# JHMDB-Sentences ---------------------------------------------------------------------------


def test_jhmdb_real_puppet_mask_and_sample_list(real, tmp_path):
  """MTTR's real sample list and a real MATLAB v5 puppet mask (stored as double); the
  pullup video's mask stands in for a second video, whose query starts with a space."""
  source = os.path.join(real, "jhmdb_sentences")
  samples = _json(os.path.join(source, "jhmdb_sentences_samples_metadata.excerpt.json"))
  mat = os.path.join(source, "puppet_mask/pullup/100_pullups_pullup_f_nm_np1_fr_med_1",
                     "puppet_mask.mat")
  assert scipy.io.whosmat(mat) == [("part_mask", (240, 320, 40), "double")]
  reference = scipy.io.loadmat(mat, mat_dtype=True)["part_mask"]
  assert reference.dtype == np.float64
  root = str(tmp_path)
  _copy(os.path.join(source, "jhmdb_sentences_samples_metadata.excerpt.json"),
        os.path.join(root, jhmdb.METADATA))
  annotations = {}
  with open(os.path.join(source, "jhmdb_annotation.excerpt.txt"), encoding="utf-8") as f:
    for line in f.read().splitlines()[1:]:
      vid, query = line.split(",", 1)
      annotations[vid] = query
  frame = _image((240, 320), "PNG")
  for vid in ("100_pullups_pullup_f_nm_np1_fr_med_1",
              "Compilationknifethrowing_throw_u_nm_np1_ba_med_12"):
    ours = [s for s in samples if s[0] == vid]
    folder = os.path.dirname(ours[0][1].replace("./jhmdb_sentences/", ""))
    for t in range(1, ours[0][3] + 1):
      _put(os.path.join(root, folder, f"{t:05d}.png"), frame)
    _copy(mat, os.path.join(root, ours[0][2].replace("./jhmdb_sentences/", "")))
    record = jhmdb.read_video(root, "test", vid)
    assert record.frame_names == tuple(f"{t:05d}" for t in range(1, 41))
    for t, mask in enumerate(record.masks):
      np.testing.assert_array_equal(raw_io.decode_id_map(mask), reference[:, :, t] > 0)
    assert [(e.text, record.meta[f"frame/{e.exp_id}"]) for e in record.expressions] == [
        (s[4], os.path.basename(s[1])[:-4]) for s in ours]
    assert record.expressions[0].text == annotations[vid]  # Raw: spaces and case kept.
  assert jhmdb.list_videos(root, "test") == sorted({s[0] for s in samples})


# Ref-DAVIS17 -------------------------------------------------------------------------------


def _derived_davis(path):
  """RVOS_PS's per-object 4-lists ({video: {"objects": ...}}) from the excerpt's verbatim
  line ranges of its tab-indented JSON."""
  with open(path, encoding="utf-8") as f:
    fragments = re.split(r"^# ---.*$", f.read(), flags=re.M)
  return {name: value for fragment in fragments if fragment.strip()
          for name, value in json.loads("{" + fragment.strip().rstrip(",") + "}").items()}


def _davis_release(root, split_videos, lines_per_file):
  """The DAVIS tree (2 frames per sequence) and the four annotator files."""
  semantics = {}
  for image_set, videos in split_videos.items():
    _put(os.path.join(root, "DAVIS/ImageSets/2017", f"{image_set}.txt"),
         "".join(f"{v}\n" for v in videos).encode())
    for video, entry in videos.items():
      semantics[video] = {k: obj["category"] for k, obj in entry["objects"].items()}
      for frame in ("00000", "00001"):
        _put(os.path.join(root, "DAVIS/JPEGImages/480p", video, f"{frame}.jpg"),
             _image((8, 8), "JPEG"))
        _put(os.path.join(root, "DAVIS/Annotations_unsupervised/480p", video, f"{frame}.png"),
             raw_io.encode_id_map(np.ones((8, 8), np.uint8)))
  _put(os.path.join(root, "DAVIS/davis_semantics.json"), json.dumps(semantics).encode())
  for (name, encoding), lines in zip(prepare.davis.TEXT_FILES, lines_per_file):
    _put(os.path.join(root, "davis_text_annotations", name),
         "".join(f"{line}\n" for line in lines).encode(encoding))


def test_davis_real_expressions_through_the_annotator_files(real, tmp_path, capsys):
  """Annotator files holding the real val expressions (RVOS_PS's 4 per object), and train
  lines as cat-girl's and disc-jockey's can only be: their objects have 5 + 3 and 3 + 4 + 1
  expressions, so a line of one file is labelled with the wrong object (the kitten line, 4th
  of object 1) or missing. The val order is checked against refvos' annot1 full-video CSV."""
  source = os.path.join(real, "ref_davis17")
  val = _derived_davis(os.path.join(source, "DERIVED_rvosps_Ref-DAVIS_valid_new_valid.excerpt.txt"))
  train = _derived_davis(
      os.path.join(source, "DERIVED_rvosps_Ref-DAVIS_train_new_train.excerpt.txt"))
  lines = [[], [], [], []]
  for videos in (val, train):
    for video, entry in videos.items():
      for obj_id, obj in entry["objects"].items():
        for n, text in enumerate(obj["expressions"]):
          lines[min(n, 3)].append(f'{video} {obj_id} "{text}"')  # cat-girl's 5th: annot2 full.
  root = str(tmp_path)
  _davis_release(root, {"val": val, "train": train}, lines)

  with pytest.raises(plan_lib.PrepareError) as failure:
    prepare.prepare("davis", root)
  mismatched = re.findall(r"train ([-\w]+) object (\d+): ", str(failure.value))
  assert mismatched == [("cat-girl", "1"), ("cat-girl", "2"), ("disc-jockey", "1"),
                        ("disc-jockey", "3")]
  assert "2 lines in Davis17_annot2_full_video.txt" in str(failure.value)

  prepare.prepare("davis", root, skip_mismatched=True)
  assert "skipped 4 inconsistent items" in capsys.readouterr().out
  assert davis.list_videos(root, "train") == ["disc-jockey"]
  assert [e.obj_ids for e in davis.read_video(root, "train", "disc-jockey").expressions] == [
      (2,)] * 4
  for video, entry in val.items():
    record = davis.read_video(root, "valid", video)
    assert [(e.text, e.obj_ids) for e in record.expressions] == [
        (text, (int(k),)) for k in sorted(entry["objects"])
        for text in entry["objects"][k]["expressions"]]
  with open(os.path.join(source, "DERIVED_refvos_DAVIS17_RE_categorization.excerpt.csv"),
            encoding="utf-8", newline="") as f:
    refvos = [row for row in csv.DictReader(f, delimiter=";") if row["video_id"] in val]
  assert len(refvos) == 3
  for row in refvos:
    record = davis.read_video(root, "valid", row["video_id"])
    (text,) = [e.text for e in record.expressions if e.obj_ids == (int(row["instance_id"]),)
               and record.meta[f"anno_id/{e.exp_id}"] == "1"]
    assert text == row["ref_exp"]


# RefCOCO/+/g -------------------------------------------------------------------------------


def _markhershey_records(path):
  """instances.json images[0] and annotations[0], and refs(unc).p[0], as pasted."""
  with open(path, encoding="utf-8") as f:
    blocks = re.findall(r"```json\n(.*?)```", f.read(), flags=re.S)
  return [json.loads(block.replace("// ignore this", "")) for block in blocks]


def test_refcoco_real_records(real, tmp_path):
  """REFER files made of the real records: the real ref names an annotation that is not
  in the pasted instances (an error naming both); pointed at the pasted annotation, it
  reads with the image of the annotation, the mask of its polygon and the `sent` text."""
  image, annotation, ref = _markhershey_records(
      os.path.join(real, "refcoco", "MarkHershey_refer_README.excerpt.md"))
  root = str(tmp_path)
  instances = {"info": {}, "images": [image], "licenses": [], "annotations": [annotation],
               "categories": [{"id": 18, "name": "dog"}]}
  refs_path, instances_path = refcoco.refer_paths(root, "refcoco/train")
  _put(instances_path, json.dumps(instances).encode())
  _put(refs_path, pickle.dumps([ref], protocol=2))
  with pytest.raises(raw_io.RawDataError, match=re.escape(
      f"{refs_path}: ref 0: annotation 1719310 is not in {instances_path}")):
    refcoco.list_videos(root, "refcoco/train")

  ours = dict(ref, ann_id=annotation["id"], image_id=image["id"],
              category_id=annotation["category_id"])
  _put(refs_path, pickle.dumps([ours], protocol=2))
  _put(os.path.join(root, refcoco.IMAGE_DIR, image["file_name"]),
       _image((image["height"], image["width"]), "JPEG"))
  assert refcoco.list_videos(root, "refcoco/train") == ["1", "2", "3"]
  assert refcoco.list_videos(root, "refcoco/val") == []
  coco = COCO(instances_path)
  for entry, sentence in zip(("1", "2", "3"), ref["sentences"]):
    record = refcoco.read_video(root, "refcoco/train", entry)
    assert record.frame_names == ("COCO_train2014_000000098304",)  # Not the ref's "_16" name.
    np.testing.assert_array_equal(raw_io.decode_id_map(record.masks[0]),
                                  coco.annToMask(annotation))
    assert record.expressions[0].text == sentence["sent"]
    assert record.meta == {"coco_image_id": "98304", "coco_ann_id": "3007", "category_id": "18"}
  assert refcoco.read_video(root, "refcoco/train", "1").expressions[0].text == (
      "the lady with the blue shirt")  # `raw` is "THE LADY WITH THE BLUE SHIRT".
