"""Counting training samples without reading records: sampling.AnchorCounts, the counts the
build records in dataset_info.json, and pipeline.train_sample_count / steps_per_epoch."""

import json
import os
import re
import shutil

import pytest

from configs import refcoco as refcoco_config
from configs import ytvos as ytvos_config
from data_pipelines import build
from data_pipelines import pipeline
from data_pipelines import raw
from data_pipelines import records
from data_pipelines import sampling
from data_pipelines import shards
from data_pipelines import synthetic
from vdit_jax import errors

# The split each twin is counted on (RefCOCO: two subsets, whose counts add up).
SPLITS = {"ytvos": ("train",), "davis": ("train",), "a2d": ("train",), "jhmdb": ("test",),
          "refcoco": ("refcoco/train", "refcoco+/train")}
NUM_FRAMES = (3, 5)


def _record(video_id, num_frames, mask_every=None, anchors=None, num_expressions=1):
  """A record with `num_frames` frames, a mask every `mask_every`-th (None: no masks) and
  expressions anchored on the frames named in `anchors` ({exp_id: frame name})."""
  names = tuple(f"{5 * i:05d}" for i in range(num_frames))
  mask_frames = names[::mask_every] if mask_every else ()
  anchors = anchors or {}
  return raw.VideoRecord(
      dataset="ytvos", split="train", video_id=video_id, frame_names=names,
      frames=(b"",) * num_frames, frame_format="jpeg", height=4, width=4,
      mask_frames=mask_frames, masks=(b"",) * len(mask_frames),
      expressions=tuple(raw.Expression(str(e), f"object {e}", (1,))
                        for e in range(num_expressions)),
      meta={raw.anchor_key(e): frame for e, frame in anchors.items()})


# (record, its anchor frames per expression) with the samples at strides 3 and 5 by hand:
# every annotated frame (or every frame without masks) is an anchor at stride 1.
HAND = [
    (_record("all23", 23, mask_every=1, num_expressions=2), {3: 2 * 8, 5: 2 * 5}),
    (_record("every3rd", 10, mask_every=3), {3: 2, 5: 1}),  # annotated 0, 3, 6, 9
    (_record("a2d", 6, mask_every=2, anchors={"0": "00010", "1": "00020"}, num_expressions=2),
     {3: 2, 5: 2}),
    (_record("nomasks", 7), {3: 3, 5: 2}),
]


def test_anchor_counts_of_hand_made_records():
  counts = [sampling.AnchorCounts.of(record) for record, _ in HAND]
  assert [c.expressions for c in counts] == [{23: 2}, {4: 1}, {1: 2}, {7: 1}]
  total = sum(counts, sampling.AnchorCounts())
  assert total.to_json() == [[1, 2], [4, 1], [7, 1], [23, 2]]
  assert sampling.AnchorCounts.from_json(total.to_json(), "here") == total
  for stride in (3, 5):
    assert total.samples(stride) == sum(by_stride[stride] for _, by_stride in HAND)
    for (record, by_stride), count in zip(HAND, counts):
      assert count.samples(stride) == len(sampling.expand(record, stride)) == by_stride[stride]
  clip_sampling = sampling.ClipSampling(num_frames=5, local_window=3, reverse_prob=0.3)
  assert clip_sampling.sample_count(total) == 10 + 1 + 2 + 2


def test_anchor_counts_reject_bad_input():
  lacking = _record("v", 4, mask_every=1, anchors={"0": "00099"})
  with pytest.raises(sampling.SampleError, match="anchored on frame '00099', which the video"):
    sampling.AnchorCounts.of(lacking)
  for bad in (None, {"7": 1}, [[7]], [[7, -1]], [[7, 1.0]], [[7, True]]):
    with pytest.raises(sampling.SampleError, match=r"^info\.json x: expected \[\[anchor frames"):
      sampling.AnchorCounts.from_json(bad, "info.json x")
  with pytest.raises(sampling.SampleError, match="listed twice"):
    sampling.AnchorCounts.from_json([[7, 1], [7, 2]], "info.json x")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """{dataset: (raw root, shards root)}: each twin, 3 videos of 7 frames, built in 2 shards."""
  root = tmp_path_factory.mktemp("counts")
  roots = {}
  for dataset, splits in SPLITS.items():
    raw_root, out = str(root / "raw" / dataset), str(root / "shards" / dataset)
    synthetic.write(dataset, raw_root, num_videos=3, num_frames=7, seed=3)
    for split in splits:
      build.build(dataset, raw_root, split, out, num_shards=2)
    roots[dataset] = raw_root, out
  return roots


def _config(dataset, shards_dir, num_frames, batch_size=2):
  """A tiny trained config counting SPLITS[dataset] of the shards in `shards_dir`."""
  if dataset == "refcoco":
    config = refcoco_config.get_config("tiny")
    config.data.subsets = tuple(split.split("/")[0] for split in SPLITS[dataset])
    split = "train"
  else:
    config = ytvos_config.get_config("tiny")  # JHMDB has no training config of its own.
    (split,) = SPLITS[dataset]
  config.data.update(dataset=dataset, shards_dir=shards_dir, split=split, format="tfrecord",
                     batch_size=batch_size)
  config.data.sampling.num_frames = num_frames
  return config


def _iterated(dataset, shards_dir, num_frames):
  """The reference: ClipSampling.samples of every record the shards hold, counted."""
  clip_sampling = sampling.ClipSampling(num_frames=num_frames, local_window=3, reverse_prob=0.3)
  return sum(len(clip_sampling.samples(records.decode(data)))
             for split in SPLITS[dataset] for path in shards.list_shards(shards_dir, split)
             for data in shards.read_tfrecord(path))


@pytest.mark.parametrize("dataset", SPLITS)
def test_count_from_dataset_info_equals_iterating_the_records(built, dataset):
  _, shards_dir = built[dataset]
  counted = {t: pipeline.train_sample_count(_config(dataset, shards_dir, t)) for t in NUM_FRAMES}
  assert counted == {t: _iterated(dataset, shards_dir, t) for t in NUM_FRAMES}
  if dataset in ("ytvos", "davis"):  # 7 annotated frames: ceil(7 / 3) = 3 and ceil(7 / 5) = 2
    assert counted[3] * 2 == counted[5] * 3 > 0
  else:  # One anchor per expression (A2D, JHMDB) or image (RefCOCO), whatever num_frames.
    assert counted[3] == counted[5] > 0


def test_steps_per_epoch(built):
  _, shards_dir = built["ytvos"]
  samples = _iterated("ytvos", shards_dir, 3)
  for batch_size in (1, 2, 4, samples):
    config = _config("ytvos", shards_dir, 3, batch_size=batch_size)
    assert pipeline.steps_per_epoch(config) == samples // batch_size
  with pytest.raises(errors.ConfigError, match=re.escape(
      f"config.data.batch_size {samples + 1} exceeds the {samples} training samples of ytvos "
      "train (at config.data.sampling.num_frames=3)")):
    pipeline.steps_per_epoch(_config("ytvos", shards_dir, 3, batch_size=samples + 1))


def test_an_epoch_of_batches_is_steps_per_epoch(built):
  _, shards_dir = built["ytvos"]
  config = _config("ytvos", shards_dir, 3, batch_size=4)
  config.data.update(num_epochs=1, worker_count=0)
  it = pipeline.make_train_iter(config, 0, 1)
  try:
    assert sum(1 for _ in it) == pipeline.steps_per_epoch(config)
  finally:
    it.close()


def test_an_old_dataset_info_names_the_rebuild_command(built, tmp_path):
  raw_root, shards_dir = built["ytvos"]
  out = str(tmp_path / "old")
  shutil.copytree(shards_dir, out)
  path = os.path.join(out, "train", shards.INFO_FILE)
  with open(path, encoding="utf-8") as f:
    info = json.load(f)
  del info["info_version"], info["expressions_by_anchor_frames"]  # as version 1 wrote it
  with open(path, "w", encoding="utf-8") as f:
    json.dump(info, f)
  config = _config("ytvos", out, 3)
  command = (f"python -m data_pipelines.build --dataset ytvos --raw RAW --split train --out "
             f"{out} --format tfrecord --overwrite")
  with pytest.raises(shards.ShardError, match=re.escape(
      f"{path} is of version 1, this code reads version {shards.INFO_VERSION}; rebuild the "
      f"split with {command}")):
    pipeline.train_sample_count(config)
  args = command.split()[3:]
  assert build.main([raw_root if a == "RAW" else a for a in args]) == 0
  assert pipeline.train_sample_count(config) == _iterated("ytvos", shards_dir, 3)
