"""Raw dataset readers on synthetic look-alike datasets.

Each reader's records are checked against the raw files read independently: frames with
PIL / PyAV, masks from the palette PNGs, transposed h5 (h5py), .mat (scipy) and COCO
polygons (pycocotools' COCO.annToMask), expressions and ids from the JSON files.
"""

import collections
import glob
import io
import json
import os
import pickle
import re
import shutil

import av
import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image
from pycocotools.coco import COCO

from data_pipelines import a2d
from data_pipelines import davis
from data_pipelines import jhmdb
from data_pipelines import raw_io
from data_pipelines import readers
from data_pipelines import refcoco
from data_pipelines import synthetic
from data_pipelines import ytvos

NUM_VIDEOS = 2
NUM_FRAMES = 6
SIZE = (48, 64)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  """{dataset: root} of every synthetic dataset, written once for the module."""
  base = tmp_path_factory.mktemp("raw")
  result = {}
  for dataset in synthetic.DATASETS:
    result[dataset] = str(base / dataset)
    synthetic.write(dataset, result[dataset], num_videos=NUM_VIDEOS, num_frames=NUM_FRAMES,
                    size=SIZE, seed=0)
  return result


@pytest.fixture
def copy_of(roots, tmp_path):
  """Copies a synthetic dataset to a scratch folder that a test may damage."""
  def copy(dataset):
    root = str(tmp_path / dataset)
    shutil.copytree(roots[dataset], root)
    return root
  return copy


def _pixels(data_or_path) -> np.ndarray:
  source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
  with Image.open(source) as image:
    return np.asarray(image)


def _load(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _dump(path, value):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f)


def _read_all(reader, root, split):
  return [reader.read_video(root, split, vid) for vid in reader.list_videos(root, split)]


def _check_frames_are_files(record, paths):
  assert len(record.frames) == len(paths)
  for data, path in zip(record.frames, paths):
    with open(path, "rb") as f:
      assert data == f.read()
    assert np.array_equal(_pixels(data), _pixels(path))
    assert (record.height, record.width) == _pixels(path).shape[:2]


# Ref-YouTube-VOS ---------------------------------------------------------------------------


def test_ytvos_train_matches_raw_files(roots):
  root = roots["ytvos"]
  meta_exp = _load(os.path.join(root, "meta_expressions/train/meta_expressions.json"))["videos"]
  meta = _load(os.path.join(root, "train/meta.json"))["videos"]
  records = _read_all(ytvos, root, "train")
  assert [r.video_id for r in records] == sorted(meta_exp) and len(records) == NUM_VIDEOS
  for record in records:
    entry = meta_exp[record.video_id]
    names = sorted(entry["frames"])
    assert entry["frames"] != names or NUM_FRAMES == 1  # The synthetic list is shuffled.
    assert record.frame_names == tuple(names) == record.mask_frames
    _check_frames_are_files(
        record, [os.path.join(root, "train/JPEGImages", record.video_id, f"{n}.jpg")
                 for n in names])
    for name, mask in zip(names, record.masks):
      path = os.path.join(root, "train/Annotations", record.video_id, f"{name}.png")
      with Image.open(path) as png:
        assert png.mode == "P"
        expected = np.asarray(png)  # Palette indices = object ids.
      assert np.array_equal(raw_io.decode_id_map(mask), expected)
    assert [(e.exp_id, e.text, e.obj_ids) for e in record.expressions] == [
        (k, v["exp"], (int(v["obj_id"]),)) for k, v in entry["expressions"].items()]
    assert record.meta == {f"category/{k}": v["category"]
                           for k, v in meta[record.video_id]["objects"].items()}
    ids = set(np.unique([raw_io.decode_id_map(m) for m in record.masks]))
    assert {o for e in record.expressions for o in e.obj_ids} <= ids


def test_ytvos_valid_is_valid_minus_test(roots):
  root = roots["ytvos"]
  listed = set(_load(os.path.join(root, "meta_expressions/valid/meta_expressions.json"))["videos"])
  test = set(_load(os.path.join(root, "meta_expressions/test/meta_expressions.json"))["videos"])
  assert test < listed
  assert ytvos.list_videos(root, "valid") == sorted(listed - test)
  assert ytvos.list_videos(root, "test") == sorted(test)
  for split in ("valid", "test"):
    for record in _read_all(ytvos, root, split):
      assert record.masks == () and record.mask_frames == ()
      assert all(e.obj_ids == () and e.text for e in record.expressions)
      _check_frames_are_files(
          record, [os.path.join(root, "valid/JPEGImages", record.video_id, f"{n}.jpg")
                   for n in record.frame_names])
  with pytest.raises(raw_io.RawDataError, match="not a validation video"):
    ytvos.read_video(root, "valid", sorted(test)[0])


@pytest.mark.parametrize("num_test, ok", [(305, True), (300, False)])
def test_ytvos_release_valid_count(tmp_path, num_test, ok):
  videos = {f"v{i:03d}": {} for i in range(507)}
  for split, listed in (("valid", videos), ("test", dict(list(videos.items())[:num_test]))):
    os.makedirs(tmp_path / "meta_expressions" / split)
    _dump(tmp_path / "meta_expressions" / split / "meta_expressions.json", {"videos": listed})
  if ok:
    assert ytvos.list_videos(str(tmp_path), "valid") == sorted(videos)[num_test:]
  else:
    with pytest.raises(raw_io.RawDataError, match="should leave 202"):
      ytvos.list_videos(str(tmp_path), "valid")


# Ref-DAVIS17 -------------------------------------------------------------------------------


def test_davis_converted_layout(roots):
  root = roots["davis"]
  for split in davis.SPLITS:
    meta_exp = _load(os.path.join(root, f"meta_expressions/{split}/meta_expressions.json"))
    for record in _read_all(davis, root, split):
      entry = meta_exp["videos"][record.video_id]
      assert record.frame_names == tuple(entry["frames"]) == record.mask_frames
      folder = os.path.join(root, split, "{}", record.video_id, "{}")
      _check_frames_are_files(record, [folder.format("JPEGImages", f"{n}.jpg")
                                       for n in record.frame_names])
      for name, mask in zip(record.frame_names, record.masks):
        expected = _pixels(folder.format("Annotations", f"{name}.png"))
        assert np.array_equal(raw_io.decode_id_map(mask), expected)
      assert any((raw_io.decode_id_map(m) == 255).any() for m in record.masks)  # Void kept.
      expressions = entry["expressions"]
      assert [(e.exp_id, e.text, e.obj_ids) for e in record.expressions] == [
          (k, v["exp"], (int(v["obj_id"]),)) for k, v in expressions.items()]
      num_objects = len(expressions) // 4
      assert [e.obj_ids[0] for e in record.expressions] == [
          k + 1 for k in range(num_objects) for _ in range(4)]
      assert [record.meta[f"anno_id/{e.exp_id}"] for e in record.expressions] == [
          "0", "1", "2", "3"] * num_objects


def test_davis_tree_gt_matches_converted_masks(roots):
  root = roots["davis"]
  tree = os.path.join(root, "DAVIS")
  with open(os.path.join(tree, "ImageSets/2017/val.txt"), encoding="utf-8") as f:
    sequences = f.read().split()
  assert davis.list_sequences(tree, "val") == sequences
  for seq in sequences:
    names, ids = davis.read_gt(tree, seq)
    record = davis.read_video(root, "valid", seq)
    assert names == record.frame_names
    assert ids.shape == (NUM_FRAMES,) + SIZE and ids.dtype == np.uint8
    for name, id_map in zip(names, ids):
      expected = _pixels(os.path.join(tree, "Annotations_unsupervised/480p", seq, f"{name}.png"))
      assert np.array_equal(id_map, expected)


def test_davis_broken_expression_order(copy_of):
  root = copy_of("davis")
  path = os.path.join(root, "meta_expressions/valid/meta_expressions.json")
  meta = _load(path)
  seq = sorted(meta["videos"])[0]
  meta["videos"][seq]["expressions"]["1"]["obj_id"] = "2"
  _dump(path, meta)
  with pytest.raises(raw_io.RawDataError, match=f"{seq}.*4-per-object"):
    davis.read_video(root, "valid", seq)


# A2D-Sentences -----------------------------------------------------------------------------


def _decode_mp4(path):
  with av.open(path) as container:
    return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _h5_instances(path):
  """Reference read of an A2D h5: {instance_id: (H, W) bool}."""
  with h5py.File(path, "r") as f:
    masks = np.array(f["reMask"])
    instances = [int(i) for i in np.array(f["instance"]).ravel()]
  assert masks.ndim == (2 if len(instances) == 1 else 3)  # (W, H) or (N, W, H).
  if len(instances) == 1:
    masks = masks[None]
  return {i: m.T > 0 for i, m in zip(instances, masks)}


def test_a2d_matches_raw_files(roots):
  root = roots["a2d"]
  seen_instance_zero = seen_overlap = seen_single = False
  for split in a2d.SPLITS:
    samples = _load(os.path.join(root, f"a2d_sentences_single_frame_{split}_annotations.json"))
    assert a2d.list_videos(root, split) == sorted({s[1] for s in samples})
    for record in _read_all(a2d, root, split):
      video = _decode_mp4(os.path.join(root, "Release/CLIPS320", f"{record.video_id}.mp4"))
      assert record.frame_names == tuple(f"{t + 1:05d}" for t in range(len(video)))
      for data, pixels in zip(record.frames, video):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        assert data == buffer.getvalue()
        assert np.abs(_pixels(data).astype(int) - pixels).mean() < 6  # 4:2:0 on noise: ~3.3
      ours = [s for s in samples if s[1] == record.video_id]
      assert [(e.text, e.obj_ids, record.meta[f"frame/{e.exp_id}"])
              for e in record.expressions] == [
                  (text, (instance + 1,), f"{frame:05d}") for text, _, frame, instance in ours]
      assert len({e.exp_id for e in record.expressions}) == len(ours)
      maps_per_frame = collections.defaultdict(list)
      for name, mask in zip(record.mask_frames, record.masks):
        maps_per_frame[name].append(raw_io.decode_id_map(mask))
      assert sorted(maps_per_frame) == sorted({f"{s[2]:05d}" for s in ours})
      for name, maps in maps_per_frame.items():
        h5 = os.path.join(root, "text_annotations/a2d_annotation_with_instances",
                          record.video_id, f"{name}.h5")
        instances = _h5_instances(h5)
        for instance, mask in instances.items():
          union = np.any([m == instance + 1 for m in maps], axis=0)
          assert np.array_equal(union, mask)
        seen_instance_zero |= 0 in instances
        seen_single |= len(instances) == 1
        overlapping = sum(m.astype(int) for m in instances.values()).max() > 1
        assert (len(maps) > 1) == overlapping
        seen_overlap |= overlapping
  assert seen_instance_zero and seen_overlap and seen_single


def test_a2d_overlap_free_id_maps_by_hand():
  masks = np.zeros((3, 2, 4), bool)
  masks[0, :, :2] = True   # Instance 0: left half.
  masks[1, :, 1:3] = True  # Instance 5: overlaps 0 in column 1.
  masks[2, :, 3] = True    # Instance 2: overlaps nothing, joins the first map.
  maps = a2d.overlap_free_id_maps([0, 5, 2], masks, "test")
  assert len(maps) == 2
  np.testing.assert_array_equal(maps[0], [[1, 1, 0, 3]] * 2)
  np.testing.assert_array_equal(maps[1], [[0, 6, 6, 0]] * 2)


# JHMDB-Sentences ---------------------------------------------------------------------------


def test_jhmdb_matches_raw_files(roots):
  root = roots["jhmdb"]
  metadata = _load(os.path.join(root, "jhmdb_sentences_samples_metadata.json"))
  assert jhmdb.list_videos(root, "test") == sorted({s[0] for s in metadata})
  for record in _read_all(jhmdb, root, "test"):
    ours = [s for s in metadata if s[0] == record.video_id]
    total = ours[0][3]
    frame_dir = os.path.dirname(ours[0][1].replace("./jhmdb_sentences/", f"{root}/"))
    assert record.frame_format == "png"
    assert record.frame_names == tuple(f"{t:05d}" for t in range(1, total + 1))
    assert len(os.listdir(frame_dir)) == total + 1  # The mask has one frame fewer.
    _check_frames_are_files(record, [os.path.join(frame_dir, f"{n}.png")
                                     for n in record.frame_names])
    part_mask = scipy.io.loadmat(ours[0][2].replace("./jhmdb_sentences/", f"{root}/"))[
        "part_mask"]
    assert record.mask_frames == record.frame_names
    for t, mask in enumerate(record.masks):
      assert np.array_equal(raw_io.decode_id_map(mask), part_mask[:, :, t])
    assert [(e.text, e.obj_ids, record.meta[f"frame/{e.exp_id}"])
            for e in record.expressions] == [
                (s[4], (1,), os.path.basename(s[1])[:-4]) for s in ours]


# RefCOCO/+/g -------------------------------------------------------------------------------


# (dataset folder, split_by) of each RefCOCO partition, as REFER's README names them.
_REFER = {"refcoco": ("refcoco", "unc"), "refcoco+": ("refcoco+", "unc"),
          "refcocog": ("refcocog", "umd"), "refcocog_google": ("refcocog", "google")}


def _without_converted_files(root):
  """Removes ReferFormer's instances_<ds>_<split>.json, leaving the REFER release."""
  for path in glob.glob(os.path.join(root, "coco", "*", "instances_*.json")):
    os.remove(path)
  return root


def test_refcoco_converted_files_match_raw_files(roots):
  root = roots["refcoco"]
  seen_rle = False
  for split in refcoco.SPLITS:
    partition, name = split.split("/")
    path = os.path.join(root, "coco", _REFER[partition][0], f"instances_{partition}_{name}.json")
    if partition == "refcocog_google":  # ReferFormer converts UMD's split only.
      assert not os.path.exists(path)
      continue
    coco = COCO(path)
    assert refcoco.list_videos(root, split) == sorted(str(i) for i in coco.getImgIds())
    for record in _read_all(refcoco, root, split):
      image = coco.loadImgs(int(record.video_id))[0]
      (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
      seen_rle |= isinstance(annotation["segmentation"], dict)
      _check_frames_are_files(record, [os.path.join(root, "coco/train2014",
                                                    image["file_name"])])
      assert record.frame_names == record.mask_frames == (image["file_name"][:-4],)
      (mask,) = record.masks
      assert np.array_equal(raw_io.decode_id_map(mask), coco.annToMask(annotation))
      assert [(e.exp_id, e.text, e.obj_ids) for e in record.expressions] == [
          (record.video_id, image["caption"], (1,))]
      assert record.meta["coco_image_id"] == str(image["original_id"])
  assert seen_rle


def test_refcoco_refer_release_matches_raw_files(copy_of, roots):
  """Without ReferFormer's files the reader joins the refs pickle and instances.json."""
  root = _without_converted_files(copy_of("refcoco"))
  for split in refcoco.SPLITS:
    partition, name = split.split("/")
    folder, split_by = _REFER[partition]
    with open(os.path.join(root, "coco", folder, f"refs({split_by}).p"), "rb") as f:
      refs = pickle.load(f)  # Our own synthetic file.
    coco = COCO(os.path.join(root, "coco", folder, "instances.json"))
    expected = [(sentence, ref) for ref in refs if ref["split"] == name
                for sentence in ref["sentences"]]
    records = _read_all(refcoco, root, split)
    assert [r.video_id for r in records] == sorted(str(k) for k in range(1, len(expected) + 1))
    records.sort(key=lambda r: int(r.video_id))
    for record, (sentence, ref) in zip(records, expected):
      annotation = coco.loadAnns(ref["ann_id"])[0]
      image = coco.loadImgs(annotation["image_id"])[0]
      assert ref["file_name"] != image["file_name"]  # A ref's file_name names no file.
      _check_frames_are_files(record, [os.path.join(root, "coco/train2014",
                                                    image["file_name"])])
      (mask,) = record.masks
      assert np.array_equal(raw_io.decode_id_map(mask), coco.annToMask(annotation))
      assert record.expressions[0].text == sentence["sent"] != sentence["raw"]
      assert record.meta == {"coco_image_id": str(image["id"]),
                             "coco_ann_id": str(ref["ann_id"]),
                             "category_id": str(annotation["category_id"])}
    if partition != "refcocog_google":
      assert records == sorted(_read_all(refcoco, roots["refcoco"], split),
                               key=lambda r: int(r.video_id))


def test_refcoco_splits_match_exactly(copy_of):
  """REFER's getRefIds matches split names as substrings; the reader does not."""
  root = _without_converted_files(copy_of("refcoco"))
  path = os.path.join(root, "coco", "refcoco", "refs(unc).p")
  with open(path, "rb") as f:
    refs = pickle.load(f)
  counts = {split: len(refcoco.list_videos(root, f"refcoco/{split}"))
            for split in ("train", "testA")}
  moved = next(ref for ref in refs if ref["split"] == "train")
  moved["split"] = "testAB"  # getRefIds(split="testA") would take it ("A" in "testAB").
  with open(path, "wb") as f:
    pickle.dump(refs, f, protocol=2)
  assert counts["testA"] == 2  # One ref of 2 sentences.
  assert len(refcoco.list_videos(root, "refcoco/testA")) == counts["testA"]
  assert len(refcoco.list_videos(root, "refcoco/train")) == counts["train"] - 2
  with pytest.raises(ValueError, match="unknown split 'refcoco/test'"):
    refcoco.list_videos(root, "refcoco/test")


# Registry, CLI, determinism ----------------------------------------------------------------


def test_registry():
  assert {name: readers.get_reader(name).DATASET for name in readers.READERS} == {
      name: name for name in synthetic.DATASETS}
  with pytest.raises(ValueError, match="unknown dataset 'mevis'"):
    readers.get_reader("mevis")
  with pytest.raises(ValueError, match="unknown split 'val'"):
    ytvos.list_videos("/nonexistent", "val")


def _tree_bytes(root):
  result = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        result[os.path.relpath(path, root)] = f.read()
  return result


def _tree_content(root):
  """Every file's bytes, but an mp4's decoded frames: libx264 may code the same lossless
  frames differently from call to call (data_pipelines/synthetic.py _mp4)."""
  return {path: [f.tobytes() for f in _decode_mp4(os.path.join(root, path))]
          if path.endswith(".mp4") else data for path, data in _tree_bytes(root).items()}


@pytest.mark.parametrize("dataset", synthetic.DATASETS)
def test_synthetic_is_reproducible(roots, tmp_path, dataset):
  synthetic.main(["--dataset", dataset, "--out", str(tmp_path / "same"),
                  "--num_videos", str(NUM_VIDEOS), "--num_frames", str(NUM_FRAMES),
                  "--height", str(SIZE[0]), "--width", str(SIZE[1])])
  synthetic.write(dataset, str(tmp_path / "other"), num_videos=NUM_VIDEOS,
                  num_frames=NUM_FRAMES, size=SIZE, seed=1)
  reference = _tree_content(roots[dataset])
  assert _tree_content(str(tmp_path / "same")) == reference
  assert _tree_content(str(tmp_path / "other")) != reference


# Bad input ---------------------------------------------------------------------------------


def _first_ytvos_video(root):
  return ytvos.list_videos(root, "train")[0]


def _edit_ytvos_expression(root, **fields):
  path = os.path.join(root, "meta_expressions/train/meta_expressions.json")
  meta = _load(path)
  vid = _first_ytvos_video(root)
  meta["videos"][vid]["expressions"]["0"].update(fields)
  _dump(path, meta)
  return vid


def test_missing_mask_file(copy_of):
  root = copy_of("ytvos")
  vid = _first_ytvos_video(root)
  path = os.path.join(root, "train/Annotations", vid, "00005.png")
  os.remove(path)
  with pytest.raises(raw_io.RawDataError, match=f"missing file {path}"):
    ytvos.read_video(root, "train", vid)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_jpeg(copy_of, damage):
  root = copy_of("ytvos")
  vid = _first_ytvos_video(root)
  path = os.path.join(root, "train/JPEGImages", vid, "00010.jpg")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2] if damage == "truncate" else b"\xff\xd8" + b"\x00" * 64)
  with pytest.raises(raw_io.RawDataError, match=f"{path}: corrupt jpeg"):
    ytvos.read_video(root, "train", vid)


def test_corrupt_png_mask_and_frame(copy_of):
  root = copy_of("davis")
  seq = davis.list_videos(root, "valid")[0]
  mask = os.path.join(root, "valid/Annotations", seq, "00001.png")
  with open(mask, "r+b") as f:
    f.seek(60)
    f.write(b"\x00\x01\x02\x03")  # Breaks the data chunk's CRC.
  with pytest.raises(raw_io.RawDataError, match=f"{mask}: corrupt PNG"):
    davis.read_video(root, "valid", seq)
  root = copy_of("jhmdb")
  vid = jhmdb.list_videos(root, "test")[0]
  frame = next(p for p in _tree_bytes(root) if vid in p and p.endswith("00002.png"))
  with open(os.path.join(root, frame), "r+b") as f:
    f.truncate(100)
  with pytest.raises(raw_io.RawDataError, match=f"{frame}: corrupt png"):
    jhmdb.read_video(root, "test", vid)


@pytest.mark.parametrize("text", ["", "   ", None])
def test_empty_expression(copy_of, text):
  root = copy_of("ytvos")
  vid = _edit_ytvos_expression(root, exp=text)
  with pytest.raises(raw_io.RawDataError, match=f"ytvos/train/{vid} expression 0: empty"):
    ytvos.read_video(root, "train", vid)


def test_unknown_object_id_ytvos(copy_of):
  root = copy_of("ytvos")
  vid = _edit_ytvos_expression(root, obj_id="9")
  with pytest.raises(raw_io.RawDataError, match=f"{vid} expression 0: unknown object id '9'"):
    ytvos.read_video(root, "train", vid)


def test_unknown_object_id_and_missing_h5_a2d(copy_of):
  root = copy_of("a2d")
  path = os.path.join(root, "a2d_sentences_single_frame_train_annotations.json")
  samples = _load(path)
  vid, frame = samples[0][1], samples[0][2]
  h5 = os.path.join(root, "text_annotations/a2d_annotation_with_instances", vid,
                    f"{frame:05d}.h5")
  _dump(path, [samples[0][:3] + [77]] + samples[1:])
  with pytest.raises(raw_io.RawDataError, match=f"{h5}: unknown object id: instance 77"):
    a2d.read_video(root, "train", vid)
  os.remove(h5)
  with pytest.raises(raw_io.RawDataError, match=f"missing file {h5}"):
    a2d.read_video(root, "train", vid)
  mp4 = os.path.join(root, "Release/CLIPS320", f"{vid}.mp4")
  with open(mp4, "wb") as f:
    f.write(b"not a video")
  with pytest.raises(raw_io.RawDataError, match=f"{mp4}: cannot decode"):
    a2d.read_video(root, "train", vid)


def test_corrupt_mat_and_refcoco_missing_image(copy_of):
  root = copy_of("jhmdb")
  vid = jhmdb.list_videos(root, "test")[0]
  mat = next(p for p in _tree_bytes(root) if vid in p and p.endswith(".mat"))
  with open(os.path.join(root, mat), "wb") as f:
    f.write(b"MATLAB 5.0 but not really")
  with pytest.raises(raw_io.RawDataError, match=f"{mat}: cannot read 'part_mask'"):
    jhmdb.read_video(root, "test", vid)
  root = copy_of("refcoco")
  image_id = refcoco.list_videos(root, "refcocog/train")[0]
  image = next(p for p in _tree_bytes(root) if p.endswith(".jpg"))
  os.remove(os.path.join(root, image))
  with pytest.raises(raw_io.RawDataError, match="missing file .*COCO_train2014"):
    refcoco.read_video(root, "refcocog/train", image_id)


def test_missing_release_files_name_their_source(tmp_path):
  root = str(tmp_path)
  cases = [
      (lambda: a2d.list_videos(root, "train"),
       f"missing file {a2d.samples_path(root, 'train')}: MTTR's sample list; derive it from the "
       f"official A2D-Sentences release with `python -m data_pipelines.prepare --dataset a2d"),
      (lambda: davis.list_videos(root, "valid"),
       f"{ytvos.meta_expressions_path(root, 'valid')}: convert the DAVIS 2017 and Ref-DAVIS17 "
       f"releases with `python -m data_pipelines.prepare --dataset davis"),
      (lambda: jhmdb.list_videos(root, "test"),
       f"{os.path.join(root, jhmdb.METADATA)}: JHMDB-Sentences is read with MTTR's fixed "
       f"sample list; download datasets/jhmdb_sentences/{jhmdb.METADATA} from "
       f"github.com/mttr2021/MTTR"),
      (lambda: refcoco.list_videos(root, "refcoco+/val"),
       f"refcoco+/val: neither ReferFormer's {refcoco.converted_path(root, 'refcoco+/val')} nor "
       f"the REFER release's {os.path.join(root, 'coco', 'refcoco+', 'refs(unc).p')} and"),
  ]
  for call, message in cases:
    with pytest.raises(raw_io.RawDataError, match=re.escape(message)):
      call()


def test_synthetic_bad_arguments_are_one_message(tmp_path, capsys):
  assert synthetic.main(["--dataset", "a2d", "--out", str(tmp_path), "--height", "47"]) == 1
  assert capsys.readouterr().err == "error: a2d: H.264 needs an even frame size, got (47, 64)\n"
