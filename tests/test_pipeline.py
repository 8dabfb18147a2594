"""Tests of the grain pipelines (data_pipelines.pipeline and the stages it composes) on tiny
shards of hand-made videos."""

import contextlib
import dataclasses
import importlib
import io
import json
import os

import numpy as np
from PIL import Image
import pytest
import transformers

from configs import davis as davis_config
from configs import refcoco as refcoco_config
from configs import ytvos as ytvos_config
from data_pipelines import bad_input
from data_pipelines import batching
from data_pipelines import build
from data_pipelines import eval_windows
from data_pipelines import pipeline
from data_pipelines import raw
from data_pipelines import raw_io
from data_pipelines import records
from data_pipelines import sampling
from data_pipelines import shards
from data_pipelines import sources
from data_pipelines import synthetic
from data_pipelines import transforms
from vdit_jax import errors
from vdit_jax import tokenizers
from vdit_jax.models import normalize

import tiny_tokenizers

H, W, NUM_FRAMES = 48, 64, 8
BUCKETS = ((72, 96), (96, 72), (96, 96))


def _jpeg(image):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def _video(video_id, num_frames=NUM_FRAMES, dataset="ytvos", meta=None):
  """A red square moving right (id 1) and a blue square on the right absent every 3rd frame."""
  names, frames, masks = [], [], []
  for t in range(num_frames):
    image = np.full((H, W, 3), 60, np.uint8)
    ids = np.zeros((H, W), np.uint8)
    x = 4 + 2 * t
    image[10:22, x:x + 12] = (230, 20, 20)
    ids[10:22, x:x + 12] = 1
    if t % 3:
      image[26:42, 40:58] = (20, 20, 230)
      ids[26:42, 40:58] = 2
    names.append(f"{5 * t:05d}")
    frames.append(_jpeg(image))
    masks.append(raw_io.encode_id_map(ids))
  expressions = (raw.Expression("0", "The red square moving  right", (1,)),
                 raw.Expression("1", "the blue square on the right", (2,)))
  return raw.VideoRecord(dataset=dataset, split="train", video_id=video_id,
                         frame_names=tuple(names), frames=tuple(frames), frame_format="jpeg",
                         height=H, width=W, mask_frames=tuple(names), masks=tuple(masks),
                         expressions=expressions, meta=meta or {})


def _write_split(root, videos_per_shard, fmt="tfrecord", split="train"):
  """Writes shards of (encoded) records into <root>/<split> with a dataset_info.json."""
  directory = shards.split_dir(root, split)
  os.makedirs(directory, exist_ok=True)
  infos = []
  for s, shard_records in enumerate(videos_per_shard):
    path = os.path.join(directory, shards.shard_name(s, len(videos_per_shard), fmt))
    with shards.ShardWriter(path, fmt) as writer:
      for r in shard_records:
        writer.write(r if isinstance(r, bytes) else records.encode(r))
    infos.append(dataclasses.asdict(writer.info))
  shards.write_info(directory, {"shards": infos, "format": fmt})
  return str(root)


def _config(root, fmt="tfrecord", window=3, **data):
  """The tiny Ref-YTVOS config (scales 64/72, max size 96) pointed at `root`."""
  config = ytvos_config.get_config("tiny")
  config.seed = 7
  config.data.update(shards_dir=root, split="train", format=fmt, batch_size=2,
                     shuffle_window=6, cycle_length=2, worker_count=0, buckets=BUCKETS)
  config.data.update(data)
  config.eval.split = "train"
  config.eval.preprocessing.window = window
  return config


VIDEO_IDS = [f"v{i}" for i in range(6)]


@pytest.fixture(scope="module")
def dataset_dirs(tmp_path_factory):
  videos = [_video(v) for v in VIDEO_IDS]
  by_shard = [videos[0:2], videos[2:4], videos[4:6]]
  return {fmt: _write_split(tmp_path_factory.mktemp(fmt), by_shard, fmt)
          for fmt in shards.FORMATS}


@contextlib.contextmanager
def _iterator(make, *args, **kwargs):
  it = make(*args, **kwargs)
  try:
    yield it
  finally:
    it.close()


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _caption_length(caption):
  return {"caption_length": np.array(len(caption), np.int32)}


@pytest.mark.parametrize("fmt", shards.FORMATS)
def test_same_seed_same_batches_and_mid_epoch_restore(dataset_dirs, fmt):
  config = _config(dataset_dirs[fmt], fmt)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    first = _take(it, 3)
    # The state survives JSON, as grain's Orbax checkpoint handler stores it.
    state = json.loads(json.dumps(it.get_state()))
    after = _take(it, 4)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    _assert_batches_equal(_take(it, 3), first)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    it.set_state(state)
    _assert_batches_equal(_take(it, 4), after)
  config.seed = 8
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    other = _take(it, 3)
  assert any(not np.array_equal(x["frames"], y["frames"]) for x, y in zip(first, other))


def test_batch_contents(dataset_dirs):
  config = _config(dataset_dirs["tfrecord"], batch_size=3)
  with _iterator(pipeline.make_train_iter, config, 0, 1, tokenize=_caption_length) as it:
    batches = _take(it, 4)
  for batch in batches:
    b, t = 3, 5
    hp, wp = batch["pad_mask"].shape[1:]
    assert (hp, wp) in BUCKETS
    assert batch["frames"].shape == (b, t, hp, wp, 3) and batch["frames"].dtype == np.uint8
    assert batch["masks"].shape == (b, t, hp, wp) and batch["masks"].dtype == bool
    assert batch["boxes"].shape == (b, t, 4) and batch["valid"].shape == (b, t)
    np.testing.assert_array_equal(batch["caption_length"],
                                  [len(c) for c in batch["caption"]])
    # The bucket is the smallest that holds every clip of the batch.
    assert (hp, wp) == transforms.choose_bucket(batch["size"], BUCKETS)
    for i in range(b):
      h, w = batch["size"][i]
      assert max(h, w) <= 96 and (min(h, w) in (64, 72) or max(h, w) == 96)
      pad = batch["pad_mask"][i]
      assert not pad[:h, :w].any() and pad[h:].all() and pad[:, w:].all()
      assert not batch["frames"][i][:, pad].any() and not batch["masks"][i][:, pad].any()
      assert batch["valid"][i].any()
      # A valid frame has a mask; its normalised box lies in the image.
      for m, box, v in zip(batch["masks"][i], batch["boxes"][i], batch["valid"][i]):
        assert m.any() >= v
        if v:
          assert np.all(box >= 0) and np.all(box[:2] <= 1) and np.all(box[2:] > 0)
      indices = batch["frame_indices"][i]
      assert np.all(np.diff(indices) >= 0) or np.all(np.diff(indices) <= 0)
      assert batch["caption"][i] in ("the red square moving right", "the red square moving left",
                                     "the blue square on the right", "the blue square on the left")
      assert batch["video_id"][i] in VIDEO_IDS and batch["exp_id"][i] in ("0", "1")
      np.testing.assert_array_equal(batch["orig_size"][i], [H, W])
      assert batch["annotated"][i].all()


def _epoch_samples(root, process_index, process_count):
  config = _config(root, batch_size=2, num_epochs=1, shuffle_window=4)
  with _iterator(pipeline.make_train_iter, config, process_index, process_count) as it:
    return [(str(v), str(e)) for b in it for v, e in zip(b["video_id"], b["exp_id"])]


def test_two_processes_read_disjoint_shards_covering_the_dataset(dataset_dirs):
  root = dataset_dirs["tfrecord"]
  per_process = [_epoch_samples(root, p, 2) for p in range(2)]
  videos = [{v for v, _ in samples} for samples in per_process]
  assert not videos[0] & videos[1]
  assert videos[0] | videos[1] == set(VIDEO_IDS)
  # One sample per (expression, anchor): 2 expressions x anchors (0, 5) per video.
  expected = {(v, e) for v in VIDEO_IDS for e in ("0", "1")}
  assert set(per_process[0]) | set(per_process[1]) == expected
  assert len(per_process[0]) + len(per_process[1]) == 4 * len(VIDEO_IDS)


def test_eval_windows_cover_every_frame_once(dataset_dirs):
  config = _config(dataset_dirs["tfrecord"], window=3)
  seen = {}
  with _iterator(pipeline.make_eval_iter, config) as it:
    for window in it:
      assert window["frames"].shape[:2] == (1, 3)
      h, w = window["size"][0]
      assert (h, w) == (64, 85)                       # shorter side 64 of 48x64
      assert window["frames"].shape[2:4] == (64, 96)  # padded to /16
      assert window["pad_mask"][0, :, 85:].all() and not window["pad_mask"][0, :, :85].any()
      key = (str(window["video_id"][0]), str(window["exp_id"][0]))
      seen.setdefault(key, []).append(window)
  assert set(seen) == {(v, e) for v in VIDEO_IDS for e in ("0", "1")}
  names = tuple(f"{5 * t:05d}" for t in range(NUM_FRAMES))
  for windows in seen.values():
    assert [int(w["window"][0]) for w in windows] == [0, 1, 2]
    assert all(int(w["num_windows"][0]) == 3 for w in windows)
    valid = np.concatenate([w["frame_valid"][0] for w in windows])
    frame_names = np.concatenate([w["frame_names"][0] for w in windows])
    assert tuple(frame_names[valid]) == names
    np.testing.assert_array_equal(valid, np.arange(9) < NUM_FRAMES)


def test_anchored_and_single_frame_videos(tmp_path):
  a2d = _video("a", dataset="a2d", meta={raw.anchor_key("0"): "00015",
                                         raw.anchor_key("1"): "00005"})
  image = _video("img", num_frames=2)
  refcoco = raw.VideoRecord(
      dataset="refcoco", split="train", video_id="img", frame_names=image.frame_names[1:],
      frames=image.frames[1:], frame_format="jpeg", height=H, width=W,
      mask_frames=image.mask_frames[1:], masks=image.masks[1:], expressions=image.expressions)
  root = _write_split(tmp_path, [[a2d, refcoco]])
  config = _config(root, batch_size=1, num_epochs=1, cycle_length=1, window=5)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    examples = {(str(b["video_id"][0]), str(b["exp_id"][0])): b for b in it}
  assert set(examples) == {("a", "0"), ("a", "1"), ("img", "0"), ("img", "1")}
  for exp_id, anchor in (("0", 3), ("1", 1)):
    b = examples[("a", exp_id)]
    indices = b["frame_indices"][0]
    assert np.all(np.diff(indices) >= 0)  # anchored (A2D) clips are never reversed
    np.testing.assert_array_equal(b["annotated"][0], indices == anchor)
    assert not b["masks"][0][~b["annotated"][0]].any()
  for exp_id in ("0", "1"):
    b = examples[("img", exp_id)]
    np.testing.assert_array_equal(b["frame_indices"][0], np.zeros(5))
    assert b["annotated"][0].all() and b["valid"][0].any()
  # Evaluation: a 5-frame window centred on an anchored expression's frame, edges repeated.
  with _iterator(pipeline.make_eval_iter, config) as it:
    windows = {(str(w["video_id"][0]), str(w["exp_id"][0])): w for w in it}
  assert len(windows) == 4
  for exp_id, anchor, expected in (("0", 3, [1, 2, 3, 4, 5]), ("1", 1, [0, 0, 1, 2, 3])):
    w = windows[("a", exp_id)]
    np.testing.assert_array_equal(w["frame_indices"][0], expected)
    assert w["frame_valid"][0].all()
    np.testing.assert_array_equal(w["annotated"][0], np.arange(5) == expected.index(anchor))
    id_map = raw_io.decode_id_map(a2d.masks[anchor])
    np.testing.assert_array_equal(w["gt_mask"][0], id_map == int(exp_id) + 1)
  # An image (RefCOCO) is anchored on itself: its window repeats it, with its mask.
  w = windows[("img", "0")]
  np.testing.assert_array_equal(w["frame_indices"][0], np.zeros(5))
  np.testing.assert_array_equal(w["annotated"][0], np.arange(5) == 0)
  np.testing.assert_array_equal(w["gt_mask"][0], raw_io.decode_id_map(refcoco.masks[0]) == 1)


def _image_record(image_id):
  video = _video(image_id, num_frames=1)
  return dataclasses.replace(video, dataset="refcoco", expressions=video.expressions[:1])


def test_refcoco_subsets_make_pseudo_videos(tmp_path):
  for subset, image_id in (("refcoco", "1"), ("refcoco+", "2")):
    _write_split(tmp_path, [[_image_record(image_id)]], split=f"{subset}/train")
  config = refcoco_config.get_config("tiny")
  config.data.update(shards_dir=str(tmp_path), subsets=("refcoco", "refcoco+"), batch_size=1,
                     num_epochs=1, buckets=BUCKETS, cycle_length=1)
  config.data.pseudo_video.motion_blur_prob = 1.0
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    batches = list(it)
  assert sorted(str(b["video_id"][0]) for b in batches) == ["1", "2"]
  for b in batches:
    np.testing.assert_array_equal(b["frame_indices"][0], np.zeros(5))
    assert b["annotated"][0].all() and b["valid"][0].any()
    # Five different frames: the image and four re-augmentations of it.
    frames = b["frames"][0]
    assert len({frames[t].tobytes() for t in range(5)}) == 5


def test_eval_only_config(dataset_dirs):
  """Ref-DAVIS has no training fields: evaluation reads only what it needs."""
  config = davis_config.get_config("tiny")
  config.data.shards_dir = dataset_dirs["array_record"]
  config.data.format = "array_record"
  config.eval.split = "train"
  assert "augmentation" not in config.data
  with _iterator(pipeline.make_eval_iter, config) as it:
    first = next(it)
  window = config.eval.preprocessing.window
  assert first["frames"].shape[1] == window
  np.testing.assert_array_equal(first["frame_indices"][0], np.arange(window))


def test_bucket_batch_pads_mixed_orientations():
  def example(h, w):
    return {"frames": np.full((2, h, w, 3), 5, np.uint8), "masks": np.ones((2, h, w), bool),
            "size": np.array([h, w], np.int32), "caption": "x"}
  batch = batching.BucketBatch(BUCKETS)([example(72, 90), example(96, 70)])
  assert batch["frames"].shape == (2, 2, 96, 96, 3) and batch["frames"].dtype == np.uint8
  assert batch["masks"].shape == (2, 2, 96, 96)
  rows, cols = np.mgrid[:96, :96]
  np.testing.assert_array_equal(batch["pad_mask"][0], (rows >= 72) | (cols >= 90))
  np.testing.assert_array_equal(batch["pad_mask"][1], cols >= 70)
  for i in range(2):
    np.testing.assert_array_equal(batch["masks"][i, 0], ~batch["pad_mask"][i])
    np.testing.assert_array_equal(batch["frames"][i, 1, ..., 2], 5 * ~batch["pad_mask"][i])
  assert list(batch["caption"]) == ["x", "x"]
  np.testing.assert_array_equal(batch["size"], [[72, 90], [96, 70]])
  # Clips that fit a landscape bucket together get it, not the square one.
  batch = batching.BucketBatch(BUCKETS)([example(72, 90), example(60, 96)])
  assert batch["frames"].shape == (2, 2, 72, 96, 3)


def _corrupt_feature(data, name, index, value):
  example = records.example_pb2.Example.FromString(data)
  example.features.feature[name].bytes_list.value[index] = value
  return example.SerializeToString()


@pytest.mark.parametrize("feature,message", [
    ("frames", r"record 1 \(bad\): frame '00005' \(#1\) does not decode"),
    ("masks", r"record 1 \(bad\): mask of frame '00005' \(#1\)")])
def test_bad_frame_or_mask(tmp_path, feature, message):
  # A 2-frame video: every clip of it reads both frames.
  good = records.encode(_video("bad", num_frames=2))
  broken = _corrupt_feature(good, feature, 1, records.decode(good).frames[1][:300]
                            if feature == "frames" else b"\x89PNG\r\n\x1a\n broken")
  root = _write_split(tmp_path, [[_video("ok1"), broken, _video("ok2")]])
  config = _config(root, batch_size=1, num_epochs=1, cycle_length=1, shuffle_window=1)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    with pytest.raises(ValueError, match=message) as error:
      list(it)
  assert "shard-00000-of-00001.tfrecord" in str(error.value)
  config.data.skip_bad_records = True
  before = bad_input.skipped_counts().get("clips", 0)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    videos = [str(b["video_id"][0]) for b in it]
  assert sorted(set(videos)) == ["ok1", "ok2"] and len(videos) == 8
  # The bad video has 2 expressions, one anchor each: two clips skipped.
  assert bad_input.skipped_counts()["clips"] - before == 2


def test_bad_record_skipped(tmp_path):
  root = _write_split(tmp_path, [[_video("ok1"), b"not an example", _video("ok2")]])
  config = _config(root, batch_size=1, num_epochs=1, cycle_length=1)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    with pytest.raises(records.RecordError, match="shard-00000-of-00001.tfrecord record 1"):
      list(it)
  config.data.skip_bad_records = True
  before = bad_input.skipped_counts().get("records", 0)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    assert len(list(it)) == 8
  assert bad_input.skipped_counts()["records"] - before == 1


def test_truncated_shard(tmp_path):
  root = _write_split(tmp_path, [[_video("ok1"), _video("cut")]])
  path = shards.list_shards(root, "train")[0]
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 100)
  config = _config(root, batch_size=1, num_epochs=1, cycle_length=1)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    with pytest.raises(shards.ShardError, match="shard-00000-of-00001.tfrecord record 1"):
      list(it)
  config.data.skip_bad_records = True
  before = bad_input.skipped_counts().get("shards", 0)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    assert {str(b["video_id"][0]) for b in it} == {"ok1"}
  assert bad_input.skipped_counts()["shards"] - before == 1


def test_tfrecord_shard_restores_mid_shard(dataset_dirs):
  path = shards.list_shards(dataset_dirs["tfrecord"], "train")[0]
  it = iter(sources.TFRecordShard(path, skip_bad=False))
  first = next(it)
  state = json.loads(json.dumps(it.get_state()))
  rest = list(it)
  restored = iter(sources.TFRecordShard(path, skip_bad=False))
  restored.set_state(state)
  assert rest and list(restored) == rest
  assert first not in rest


def test_worker_processes_restore(dataset_dirs, tmp_path):
  config = _config(dataset_dirs["array_record"], "array_record", worker_count=2,
                   worker_buffer_size=1)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    _take(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    after = _take(it, 2)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    it.set_state(state)
    _assert_batches_equal(_take(it, 2), after)
  # Evaluation of a single shard with 2 workers asked for (one gets used) sees every window.
  root = _write_split(tmp_path, [[_video("a"), _video("b")]])
  config = _config(root, worker_count=2, window=3)
  with _iterator(pipeline.make_eval_iter, config) as it:
    windows = [(str(w["video_id"][0]), str(w["exp_id"][0]), int(w["window"][0])) for w in it]
  assert sorted(windows) == [(v, e, k) for v in "ab" for e in "01" for k in range(3)]


def test_synthetic_raw_to_built_shards_to_batches(tmp_path):
  """D's synthetic Ref-YTVOS -> E1's build -> the pipelines; eval frames equal the raw JPEGs
  resized with PIL, and normalised on the device as numpy normalises them, padding 0."""
  raw_root, out = str(tmp_path / "raw"), str(tmp_path / "shards")
  synthetic.write("ytvos", raw_root, num_videos=2, num_frames=6)
  for split in ("train", "valid"):
    build.build("ytvos", raw_root, split, out, num_shards=1)
  config = ytvos_config.get_config("tiny")
  config.data.update(shards_dir=out, batch_size=2)
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    batch = next(it)
  assert batch["frames"].shape[:2] == (2, 5) and batch["valid"].any(axis=1).all()
  with _iterator(pipeline.make_eval_iter, config) as it:
    window = next(it)
  video, names = str(window["video_id"][0]), window["frame_names"][0]
  h, w = window["size"][0]
  assert window["frames"].dtype == np.uint8 and not window["frames"][0][:, h:, w:].any()
  mean = np.array(config.data.mean)
  backbone = np.asarray(normalize.backbone_frames(window["frames"], window["pad_mask"],
                                                  config.data.mean, config.data.std))
  padded = backbone[0][:, window["pad_mask"][0]]
  np.testing.assert_allclose(padded, np.broadcast_to(mean * 2 - 1, padded.shape), atol=1e-6)
  for t, name in enumerate(names[window["frame_valid"][0]]):
    path = os.path.join(raw_root, "valid", "JPEGImages", video, f"{name}.jpg")
    with Image.open(path) as image:
      reference = np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR))
    np.testing.assert_array_equal(window["frames"][0, t, :h, :w], reference)
    np.testing.assert_allclose(backbone[0, t, :h, :w], reference / 255 * 2 - 1, rtol=0,
                               atol=1e-6)


def test_caption_tokens_in_train_batches_and_eval_windows(dataset_dirs, tmp_path):
  """Both pipelines add the CaptionTokenizer's fixed-length tokens of each (flipped) caption,
  equal to transformers' tokenizers on that caption; evaluation in a worker process, to
  which the tokenizer is pickled."""
  clip_dir = tiny_tokenizers.clip_dir(tmp_path / "clip", **tiny_tokenizers.MODELSCOPE_FILES)
  roberta_dir = tiny_tokenizers.roberta_dir(tmp_path / "roberta")
  config = _config(dataset_dirs["tfrecord"], window=4)
  tokenize = tokenizers.CaptionTokenizer(tokenizers.clip_tokenizer(clip_dir),
                                         tokenizers.roberta_tokenizer(roberta_dir),
                                         **config.data.text)
  references = {
      "clip": transformers.CLIPTokenizer.from_pretrained(clip_dir, local_files_only=True),
      "roberta": transformers.RobertaTokenizerFast.from_pretrained(roberta_dir,
                                                                   local_files_only=True)}
  lengths = {"clip": config.data.text.clip_max_length,
             "roberta": config.data.text.roberta_max_length}

  def check(batch, rows):
    for name, reference in references.items():
      want = reference(list(batch["caption"]), padding="max_length", max_length=lengths[name],
                       truncation=True, return_tensors="np")
      assert batch[f"{name}_ids"].shape == (rows, lengths[name])
      np.testing.assert_array_equal(batch[f"{name}_ids"], want["input_ids"])
      np.testing.assert_array_equal(batch[f"{name}_mask"], want["attention_mask"])

  with _iterator(pipeline.make_train_iter, config, 0, 1, tokenize=tokenize) as it:
    for batch in _take(it, 4):
      check(batch, config.data.batch_size)
  config.data.worker_count = 1
  with _iterator(pipeline.make_eval_iter, config, tokenize=tokenize) as it:
    for window in _take(it, 3):
      check(window, 1)


@pytest.mark.parametrize("name", ["ytvos", "davis", "a2d", "jhmdb", "refcoco"])
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_config_sub_dicts_are_the_stages_arguments(name, arg):
  """Each data sub-dict of every config is exactly the keyword arguments of its stage, and
  the buckets hold every batch the augmentation can make."""
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  eval_windows.Preprocessing(**config.eval.preprocessing)
  assert set(config.data.text) == {"clip_max_length", "roberta_max_length"}
  if "augmentation" in config.data:
    clip_sampling = sampling.ClipSampling(**config.data.sampling)
    augmentation = transforms.Augmentation(**config.data.augmentation)
    transforms.PseudoVideo(**config.data.pseudo_video)
    batching.check_buckets(config.data.buckets, augmentation, config.data.batch_size)
    assert clip_sampling.num_frames == 5


def test_buckets_too_small_for_the_augmentation_are_refused(dataset_dirs):
  config = _config(dataset_dirs["tfrecord"], buckets=((72, 96), (96, 72)))
  with pytest.raises(errors.ConfigError, match=r"config.data.buckets .* none holds 96x96"):
    pipeline.make_train_iter(config, 0, 1)
  config.data.batch_size = 1  # One clip a batch never mixes orientations.
  with _iterator(pipeline.make_train_iter, config, 0, 1) as it:
    assert next(it)["frames"].shape[2:4] in ((72, 96), (96, 72))
