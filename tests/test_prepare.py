"""`python -m data_pipelines.prepare` on synthetic twins written in the releases' layouts.

The synthetic writer makes both a release and the converted files (MTTR's, ReferFormer's)
from its scenes, without the preparation code; each preparation, run on the release alone,
must give the converted files byte for byte, and the readers the same records. A few
entries are also checked against the protocols written out by hand: h5py / pycocotools /
csv reads of the release files.
"""

import csv
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from data_pipelines import a2d
from data_pipelines import davis
from data_pipelines import prepare
from data_pipelines import raw_io
from data_pipelines import refcoco
from data_pipelines import synthetic
from data_pipelines.prepare import davis as prepare_davis
from data_pipelines.prepare import plan as plan_lib
from vdit_jax import errors

A2D_MTTR_FILES = ("a2d_sentences_single_frame_train_annotations.json",
                  "a2d_sentences_single_frame_test_annotations.json",
                  "a2d_sentences_test_annotations_in_coco_format.json")
DAVIS_CONVERTED = ("meta_expressions/train/meta_expressions.json",
                   "meta_expressions/valid/meta_expressions.json",
                   "train/meta.json", "valid/meta.json")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  base = tmp_path_factory.mktemp("twins")
  result = {}
  for dataset in ("a2d", "davis", "refcoco"):
    result[dataset] = str(base / dataset)
    synthetic.write(dataset, result[dataset], num_videos=2, num_frames=6, seed=3)
  return result


def _read(path):
  with open(path, "rb") as f:
    return f.read()


def _lines(path, encoding="utf-8"):
  with open(path, encoding=encoding) as f:
    return f.read().splitlines()


def _write_lines(path, lines, encoding="utf-8"):
  with open(path, "w", encoding=encoding) as f:
    f.write("".join(f"{line}\n" for line in lines))


def _release_only(source, target, converted):
  """Copies a twin without its converted files; returns {converted path: original bytes}."""
  shutil.copytree(source, target, symlinks=True)
  originals = {}
  for name in converted:
    originals[name] = _read(os.path.join(target, name))
    os.remove(os.path.join(target, name))
  return originals


def _records(reader, root):
  return {split: [reader.read_video(root, split, v) for v in reader.list_videos(root, split)]
          for split in reader.SPLITS}


# A2D-Sentences -----------------------------------------------------------------------------


def test_a2d_release_gives_mttr_files_and_records(roots, tmp_path, capsys):
  root = str(tmp_path / "a2d")
  originals = _release_only(roots["a2d"], root, A2D_MTTR_FILES)
  assert prepare.prepare("a2d", root) == {os.path.join(root, n): "wrote" for n in A2D_MTTR_FILES}
  for name, data in originals.items():
    assert _read(os.path.join(root, name)) == data, name
  assert _records(a2d, root) == _records(a2d, roots["a2d"])
  report = capsys.readouterr().out
  assert "text_annotations/a2d_annotation.txt: 11 sentences" in report
  assert "instance id '1 (copy)'" in report and "MTTR drops it too" in report

  mtimes = {n: os.stat(os.path.join(root, n)).st_mtime_ns for n in A2D_MTTR_FILES}
  assert prepare.prepare("a2d", root) == {os.path.join(root, n): "kept" for n in A2D_MTTR_FILES}
  assert {n: os.stat(os.path.join(root, n)).st_mtime_ns for n in A2D_MTTR_FILES} == mtimes
  assert "it agrees with the release" in capsys.readouterr().out


def test_a2d_protocol_by_hand(roots, tmp_path):
  """A test sentence whose instance is in both annotated frames, and the dropped rows."""
  root = str(tmp_path / "a2d")
  _release_only(roots["a2d"], root, A2D_MTTR_FILES)
  prepare.prepare("a2d", root)
  with open(os.path.join(root, "Release/videoset.csv"), newline="") as f:
    usage = {row[0]: row[8] for row in csv.reader(f)}
  missed = _lines(os.path.join(root, "text_annotations/a2d_missed_videos.txt"))
  with open(os.path.join(root, "text_annotations/a2d_annotation.txt"), newline="") as f:
    rows = list(csv.DictReader(f))
  with open(os.path.join(root, "a2d_sentences_single_frame_test_annotations.json")) as f:
    samples = json.load(f)
  with open(os.path.join(root, "a2d_sentences_test_annotations_in_coco_format.json")) as f:
    gt = json.load(f)
  assert all(usage[m] in "01" for m in missed) and not {s[1] for s in samples} & set(missed)

  objects = {vid: sum(r["video_id"] == vid for r in rows) for vid in usage}
  # Object 1 of a 3-object video: in both annotated frames, its sentence has a leading space.
  row = next(r for r in rows if usage[r["video_id"]] == "1" and objects[r["video_id"]] == 3
             and r["query"].startswith(" "))
  h5_dir = os.path.join(root, "text_annotations/a2d_annotation_with_instances", row["video_id"])
  expected = []
  for name in sorted(os.listdir(h5_dir)):
    with h5py.File(os.path.join(h5_dir, name), "r") as f:
      ids = [int(i) for i in np.asarray(f["instance"]).ravel()]
      if int(row["instance_id"]) in ids:
        k = ids.index(int(row["instance_id"]))
        remask = np.asarray(f["reMask"])
        mask = (remask if remask.ndim == 2 else remask[k]).T  # Stored (W, H).
        x1, y1, x2, y2 = np.asarray(f["reBBox"])[:, k]
        expected.append((int(name[:5]), mask, [x1, y1, x2 - x1, y2 - y1]))
  assert len(expected) == 2  # This instance is in both annotated frames.
  ours = [s for s in samples if s[1:2] == [row["video_id"]] and s[3] == int(row["instance_id"])]
  assert ours == [[row["query"], row["video_id"], frame, int(row["instance_id"])]
                  for frame, _, _ in expected]  # The leading space is kept, as MTTR keeps it.
  capital = next(r for r in rows if r["video_id"] == row["video_id"] and r["query"][0].isupper())
  assert [s[0] for s in samples if s[1:2] == [row["video_id"]]
          and s[3] == int(capital["instance_id"])] == [capital["query"].lower()] * 2
  for frame, mask, box in expected:
    image_id = f"v_{row['video_id']}_f_{frame}_i_{row['instance_id']}"  # Frame not padded.
    position = [i["id"] for i in gt["images"]].index(image_id)
    image, annotation = gt["images"][position], gt["annotations"][position]
    assert image == {"id": image_id, "height": mask.shape[0], "width": mask.shape[1]}
    assert annotation["id"] == position + 1 and annotation["image_id"] == image_id
    assert np.array_equal(mask_utils.decode(annotation["segmentation"]), mask)
    assert annotation["area"] == float(mask.sum())
    assert annotation["bbox"] == [float(v) for v in box]
  assert len(gt["images"]) == len(samples)
  copied = next(r for r in rows if r["instance_id"] == "1 (copy)")
  assert usage[copied["video_id"]] == "0"
  with open(os.path.join(root, "a2d_sentences_single_frame_train_annotations.json")) as f:
    assert copied["query"].lower() not in {s[0] for s in json.load(f)}


def test_a2d_videoset_header_is_detected(roots, tmp_path):
  root = str(tmp_path / "a2d")
  _release_only(roots["a2d"], root, A2D_MTTR_FILES[:1])
  path = os.path.join(root, "Release/videoset.csv")
  lines = _lines(path)
  _write_lines(path, ["VID,Label,Start,End,Height,Width,FramesCut,AnnotatedFrames,Usage"] + lines)
  assert set(prepare.prepare("a2d", root).values()) == {"wrote", "kept"}
  _write_lines(path, lines + ["abc,11,00:00:00,00:00:01,48,64,6,2"])
  with pytest.raises(raw_io.RawDataError, match=f"{path}: line {len(lines) + 1} is not 9 columns"):
    prepare.prepare("a2d", root)


def test_a2d_inconsistencies_stop_or_are_skipped(roots, tmp_path, capsys):
  root = str(tmp_path / "a2d")
  originals = _release_only(roots["a2d"], root, A2D_MTTR_FILES)
  path = os.path.join(root, "text_annotations/a2d_annotation.txt")
  lines = _lines(path)
  missed = _lines(os.path.join(root, "text_annotations/a2d_missed_videos.txt"))[0]
  _write_lines(path, lines + ["zzzzzzzzzzz,0,a video no one listed", f"{missed},0,a missed video"])
  with pytest.raises(plan_lib.PrepareError) as failure:
    prepare.prepare("a2d", root)
  message = str(failure.value)
  assert "2 inconsistencies; nothing was written" in message
  assert (f"{path} line {len(lines) + 1}: video zzzzzzzzzzz is not in Release/videoset.csv"
          in message)
  assert f"line {len(lines) + 2}: video {missed} is listed in" in message
  assert not any(os.path.exists(os.path.join(root, n)) for n in A2D_MTTR_FILES)

  assert set(prepare.prepare("a2d", root, skip_mismatched=True).values()) == {"wrote"}
  assert "skipped 2 inconsistent items" in capsys.readouterr().out
  for name, data in originals.items():
    assert _read(os.path.join(root, name)) == data


def test_a2d_existing_file_that_differs(roots, tmp_path, capsys):
  root = str(tmp_path / "a2d")
  _release_only(roots["a2d"], root, ())
  path = os.path.join(root, A2D_MTTR_FILES[0])
  with open(path) as f:
    samples = json.load(f)
  with open(path, "w") as f:
    json.dump(samples[:-1], f)
  before = _read(path)
  with pytest.raises(plan_lib.PrepareError,
                     match=f"{path} exists and differs from what the release gives: / has "
                           f"{len(samples) - 1} entries in the file, {len(samples)} from"):
    prepare.prepare("a2d", root)
  statuses = prepare.prepare("a2d", root, skip_mismatched=True)
  assert statuses[path] == "differs" and _read(path) == before
  assert "skipped 1 inconsistent items" in capsys.readouterr().out


def test_a2d_without_the_sentences_h5_folder(roots, tmp_path):
  root = str(tmp_path / "a2d")
  _release_only(roots["a2d"], root, ())
  shutil.rmtree(os.path.join(root, a2d.MASK_DIR))
  os.makedirs(os.path.join(root, "Release/Annotations/mat"))
  with pytest.raises(plan_lib.PrepareError,
                     match=rf"missing folder {os.path.join(root, a2d.MASK_DIR)}: unzip "
                           rf"A2D-Sentences' a2d_annotation_with_instances\.zip .*Release/"
                           rf"Annotations/mat holds the original A2D \.mat files, which have no "
                           rf"instance ids"):
    prepare.prepare("a2d", root)


# Ref-DAVIS17 -------------------------------------------------------------------------------


def _davis_release(roots, tmp_path):
  root = str(tmp_path / "davis")
  originals = _release_only(roots["davis"], root, DAVIS_CONVERTED)
  for split in ("train", "valid"):
    shutil.rmtree(os.path.join(root, split))
  return root, originals


def test_davis_release_gives_referformer_layout_and_records(roots, tmp_path):
  root, originals = _davis_release(roots, tmp_path)
  statuses = prepare.prepare("davis", root)
  assert set(statuses.values()) == {"wrote"}
  for name, data in originals.items():
    assert _read(os.path.join(root, name)) == data, name
  link = os.path.join(root, "valid/Annotations", davis.list_videos(root, "valid")[0])
  assert os.path.islink(link) and not os.path.isabs(os.readlink(link))
  assert _records(davis, root) == _records(davis, roots["davis"])
  assert set(prepare.prepare("davis", root).values()) == {"kept"}


def test_davis_on_referformer_moved_folders(roots, tmp_path):
  """ReferFormer's converter moves the DAVIS folders; identical folders are accepted."""
  root = str(tmp_path / "davis")
  shutil.copytree(roots["davis"], root)
  statuses = prepare.prepare("davis", root)
  assert set(statuses.values()) == {"kept"}
  seq = davis.list_videos(root, "train")[0]
  os.remove(os.path.join(root, "train/JPEGImages", seq, "00002.jpg"))
  with pytest.raises(plan_lib.PrepareError, match=rf"train/JPEGImages/{seq} exists and differs "
                                                  rf".*its files differ .*\(0 only here, 1 only"):
    prepare.prepare("davis", root)


def test_davis_lines_that_do_not_line_up(roots, tmp_path, capsys):
  """One annotator labels object 2 as object 1 (as in Ref-DAVIS17's cat-girl); another
  file lacks a line: each object is reported, not zipped into the wrong expressions."""
  root, originals = _davis_release(roots, tmp_path)
  text_dir = os.path.join(root, prepare_davis.TEXT_DIR)
  seq = davis.list_sequences(os.path.join(root, "DAVIS"), "train")[0]
  full2 = os.path.join(text_dir, "Davis17_annot2_full_video.txt")
  lines = _lines(full2, "latin-1")
  relabelled = next(i for i, line in enumerate(lines) if line.startswith(f"{seq} 2 "))
  lines[relabelled] = lines[relabelled].replace(f"{seq} 2 ", f"{seq} 1 ")
  _write_lines(full2, lines, "latin-1")
  first1 = os.path.join(text_dir, "Davis17_annot1.txt")
  other = davis.list_sequences(os.path.join(root, "DAVIS"), "val")[1]
  lines1 = _lines(first1)
  dropped = next(i for i, line in enumerate(lines1) if line.startswith(f"{other} 1 "))
  _write_lines(first1, lines1[:dropped] + lines1[dropped + 1:])

  with pytest.raises(plan_lib.PrepareError) as failure:
    prepare.prepare("davis", root)
  message = str(failure.value)
  ones = [i + 1 for i, line in enumerate(lines) if line.startswith(f"{seq} 1 ")]
  assert len(ones) == 2
  assert (f"train {seq} object 1: 1 lines in Davis17_annot1.txt (" in message
          and f"2 lines in Davis17_annot2_full_video.txt ({ones[0]}, {ones[1]})" in message)
  assert (f"train {seq} object 2: " in message
          and "0 lines in Davis17_annot2_full_video.txt" in message)
  assert f"valid {other} object 1: 0 lines in Davis17_annot1.txt, 1 lines in" in message
  assert "3 inconsistencies" in message
  assert not os.path.exists(os.path.join(root, DAVIS_CONVERTED[0]))

  prepare.prepare("davis", root, skip_mismatched=True)
  assert "skipped 3 inconsistent items" in capsys.readouterr().out
  with open(os.path.join(root, DAVIS_CONVERTED[0])) as f:
    derived = json.load(f)["videos"]
  original = json.loads(originals[DAVIS_CONVERTED[0]])["videos"]
  original_valid = json.loads(originals[DAVIS_CONVERTED[1]])["videos"]
  kept = {k: v for k, v in original[seq]["expressions"].items() if v["obj_id"] not in "12"}
  assert [(e["exp"], e["obj_id"]) for e in derived[seq]["expressions"].values()] == [
      (e["exp"], e["obj_id"]) for e in kept.values()]
  record = davis.read_video(root, "train", seq)
  assert [e.obj_ids for e in record.expressions] == [(3,)] * 4
  others = sorted({e["obj_id"] for e in original_valid[other]["expressions"].values()} - {"1"})
  assert [e.obj_ids[0] for e in davis.read_video(root, "valid", other).expressions] == [
      int(k) for k in others for _ in range(4)]


def test_davis_annotator_lines_by_hand(tmp_path):
  """ReferFormer's reading of a line: names fixed, runs of spaces made one, quotes removed."""
  path = str(tmp_path / "annot2.txt")
  with open(path, "wb") as f:
    f.write("clasic-car 1 \"the  caf\u00e9 car\"\n\n"
            "motor-bike\t2   \"a bike\"  \n"
            "dog-scale 1 \"dog\"\n"
            "judo 1 unquoted words\n"
            "judo x \"bad id\"\n".encode("latin-1"))
  problems = []
  lines = prepare_davis.read_expressions(path, "latin-1", problems)
  assert lines == {("classic-car", "1"): [(1, "the caf\u00e9 car")],
                   ("motorbike", "2"): [(3, "a bike")], ("dogs-scale", "1"): [(4, "dog")]}
  assert len(problems) == 2 and problems[0].startswith(f"{path} line 5: not `<video>")
  assert problems[1].startswith(f"{path} line 6")


# RefCOCO/+/g -------------------------------------------------------------------------------


def test_refcoco_prepare_checks_and_writes_nothing(roots, tmp_path, capsys):
  root = str(tmp_path / "refcoco")
  shutil.copytree(roots["refcoco"], root)
  assert prepare.prepare("refcoco", root) == {}
  report = capsys.readouterr().out
  assert "refcocog_google/val: 6 sentences of 3 objects in 2 images" in report
  assert "instances_refcoco+_testA.json agrees with the REFER files" in report
  path = refcoco.converted_path(root, "refcoco+/testA")
  with open(path) as f:
    converted = json.load(f)
  converted["images"][0]["caption"] = converted["images"][0]["caption"].upper()
  with open(path, "w") as f:
    json.dump(converted, f)
  with pytest.raises(plan_lib.PrepareError, match=re.escape(
      f"{path} differs from the REFER files: 1 entries differ, e.g. ['1']")):
    prepare.prepare("refcoco", root)
  os.remove(os.path.join(root, "coco/train2014", converted["images"][0]["file_name"]))
  with pytest.raises(plan_lib.PrepareError, match="refcoco/train: 1 images are not in"):
    prepare.prepare("refcoco", root)


def test_refs_pickle_is_read_without_building_objects(tmp_path):
  """A Python 2 refs pickle (byte strings, protocol 2) loads; a crafted one runs nothing."""
  py2 = tmp_path / "py2.p"
  # Protocol 2, as Python 2 writes [{'split': 'train'}] (SHORT_BINSTRING byte strings).
  py2.write_bytes(b"\x80\x02]q\x00}q\x01(U\x05splitq\x02U\x05trainq\x03ua.")
  assert raw_io.load_pickle(str(py2)) == [{"split": "train"}]

  marker = tmp_path / "ran"

  class Payload:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  crafted = tmp_path / "crafted.p"
  crafted.write_bytes(pickle.dumps([{"ref_id": 0, "split": Payload()}], protocol=2))
  with pytest.raises(raw_io.RawDataError, match=rf"{crafted}: cannot read the pickle: refusing "
                                                rf"to build posix\.system"):
    raw_io.load_pickle(str(crafted))
  assert not marker.exists()
  assert issubclass(raw_io.RawDataError, errors.UserError)


# The command -------------------------------------------------------------------------------


def test_command_line(roots, tmp_path):
  root = str(tmp_path / "a2d")
  _release_only(roots["a2d"], root, A2D_MTTR_FILES[:1])
  command = [sys.executable, "-m", "data_pipelines.prepare", "--dataset", "a2d", "--raw", root]
  run = subprocess.run(command, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  assert f"a2d: wrote {os.path.join(root, A2D_MTTR_FILES[0])}: " in run.stdout
  assert f"a2d: kept {os.path.join(root, A2D_MTTR_FILES[1])}: " in run.stdout
  os.remove(os.path.join(root, "text_annotations/a2d_missed_videos.txt"))
  run = subprocess.run(command + ["--skip_mismatched"], capture_output=True, text=True,
                       timeout=120)
  assert run.returncode == 1
  assert run.stderr.startswith("error: missing file ") and "Traceback" not in run.stderr
