"""End-to-end evaluation (vdit_jax.evaluation.runner) on the synthetic twin of every dataset,
and its parts.

Predictions come from stand-ins (tests/eval_oracle.py): the ground truth, read here from the
synthetic datasets' own raw files (meta_expressions and annotation PNGs, MTTR's COCO JSON,
JHMDB's puppet masks, ReferFormer's RefCOCO JSON), not through the pipeline; frames are kept
at their original size, so an oracle must score exactly 1 and its masks must come back
unchanged. References: those raw files, PIL reading back what was written, pycocotools run
here on the written COCO files, torch for the resize and the DAVIS merge, and a one-process
run for the two-process one.
"""

import dataclasses
import json
import os
import subprocess
import sys
import threading
import zipfile

import jax
import numpy as np
from PIL import Image
from pycocotools import coco
from pycocotools import cocoeval
import pytest
import torch

import eval_config
import eval_oracle
import subprocesses
from data_pipelines import build
from data_pipelines import eval_windows
from data_pipelines import pipeline
from data_pipelines import records
from data_pipelines import shards
from data_pipelines import synthetic
from vdit_jax import errors
from vdit_jax.evaluation import assembly
from vdit_jax.evaluation import davis_runs
from vdit_jax.evaluation import in_training
from vdit_jax.evaluation import original_size
from vdit_jax.evaluation import prediction
from vdit_jax.evaluation import runner
from vdit_jax.evaluation import shape_batches

SPLITS = {"ytvos": "train", "davis": "valid", "a2d": "test", "jhmdb": "test",
          "refcoco": "refcoco/val"}
NUM_FRAMES = 6
MAX_SHAPES = 8  # The goal per dataset.
STEP = 11  # The checkpoint step results.json records.


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
  """Raw synthetic datasets (3 videos of 6 frames, 48 x 64) and their splits built in 2 shards."""
  root = tmp_path_factory.mktemp("twins")
  for dataset, split in list(SPLITS.items()) + [("ytvos", "valid")]:
    raw = str(root / "raw" / dataset)
    if not os.path.exists(raw):
      synthetic.write(dataset, raw, num_videos=3, num_frames=NUM_FRAMES, size=eval_config.SIZE)
    build.build(dataset, raw, split, str(root / "shards" / dataset), num_shards=2)
  return root


def _config(twins, dataset, split=None, **preprocessing):
  config = eval_config.tiny_config(dataset, split or SPLITS[dataset],
                                   str(twins / "shards" / dataset),
                                   str(twins / "raw" / "davis" / "DAVIS"))
  config.eval.preprocessing.update(preprocessing)
  return config


def _oracle(twins, dataset, config, shift=0, split=None):
  truth = eval_oracle.GroundTruth(dataset, str(twins / "raw" / dataset), split or SPLITS[dataset])
  return eval_oracle.Oracle(truth, config.eval.queries, shift=shift)


def _evaluate(config, out_dir, predict_fn, capsys=None, **kwargs):
  result = runner.evaluate(config, "", predict_fn, step=STEP, out_dir=str(out_dir),
                           progress=False, **kwargs)
  with open(result.results) as f:
    results = json.load(f)
  printed = capsys.readouterr().out if capsys else ""
  return results, result, printed


def _shapes_printed(printed):
  line = next(l for l in printed.splitlines() if l.startswith("compiled shapes"))
  return int(line.split(":")[1])


def _read(path):
  with Image.open(path) as image:
    return image.mode, np.asarray(image), image.getpalette()


def test_ytvos_oracle_scores_one_and_writes_the_server_layout(twins, tmp_path, capsys):
  config = _config(twins, "ytvos")
  results, _, printed = _evaluate(config, tmp_path, _oracle(twins, "ytvos", config), capsys)
  assert results["figures"] == {"J&F": 1.0, "J": 1.0, "F": 1.0}
  assert results["step"] == STEP and results["counts"]["videos_evaluated"] == 3
  assert "J&F" in printed and _shapes_printed(printed) == len(results["shapes"]) <= MAX_SHAPES
  raw = twins / "raw" / "ytvos"
  with open(raw / "meta_expressions" / "train" / "meta_expressions.json") as f:
    videos = json.load(f)["videos"]
  expected = set()
  for video, meta in videos.items():
    for exp_id, expression in meta["expressions"].items():
      for frame in meta["frames"]:
        name = f"Annotations/{video}/{exp_id}/{frame}.png"
        expected.add(name)
        mode, mask, _ = _read(tmp_path / name)
        _, ids, _ = _read(raw / "train" / "Annotations" / video / f"{frame}.png")
        assert mode == "L"
        np.testing.assert_array_equal(mask, 255 * (ids == int(expression["obj_id"])))
  with zipfile.ZipFile(tmp_path / "submission.zip") as z:
    files = {n for n in z.namelist() if not n.endswith("/")}
  assert files == expected


def test_ytvos_valid_submission_holds_every_listed_frame(twins, tmp_path):
  """The valid split (videos of meta_expressions/valid minus those of test, no masks): one
  0/255 PNG per listed frame of every expression, here the JPEG's red channel > 0.5."""
  config = _config(twins, "ytvos", "valid")

  def red(batch):
    return {"masks": batch["frames"][..., 0].astype(np.float32) / 255,
            "scores": np.full(len(batch["frames"]), 0.5, np.float32)}

  results, _, _ = _evaluate(config, tmp_path, red)
  assert results["figures"] == {} and results["files"] == {"submission": "submission.zip"}
  meta = twins / "raw" / "ytvos" / "meta_expressions"
  listed = {}
  for split in ("valid", "test"):
    with open(meta / split / "meta_expressions.json") as f:
      listed[split] = json.load(f)["videos"]
  expected = {f"Annotations/{v}/{e}/{frame}.png" for v, m in listed["valid"].items()
              if v not in listed["test"] for e in m["expressions"] for frame in m["frames"]}
  with zipfile.ZipFile(tmp_path / "submission.zip") as z:
    files = {n for n in z.namelist() if not n.endswith("/")}
    assert files == expected
    name = sorted(files)[0]
    with z.open(name) as f:
      mask = np.asarray(Image.open(f))
  _, video, _, frame = name.split("/")
  with Image.open(twins / "raw" / "ytvos" / "valid" / "JPEGImages" / video / frame.replace(
      ".png", ".jpg")) as image:
    reference = np.asarray(image.convert("RGB"))[..., 0]
  np.testing.assert_array_equal(mask, 255 * (reference >= 128))


def test_davis_runs_are_palette_id_maps_and_the_oracle_scores_one(twins, tmp_path, capsys):
  config = _config(twins, "davis")
  results, _, printed = _evaluate(config, tmp_path, _oracle(twins, "davis", config), capsys)
  figures = results["figures"]
  for run in [""] + [f"anno_{r}/" for r in range(4)]:
    assert figures[f"{run}J&F-Mean"] == figures[f"{run}J-Mean"] == figures[f"{run}F-Mean"] == 1
  assert "mean of the 4 annotator runs" in printed
  assert _shapes_printed(printed) <= MAX_SHAPES
  davis_root = twins / "raw" / "davis" / "DAVIS"
  sequences = (davis_root / "ImageSets" / "2017" / "val.txt").read_text().split()
  for r in range(4):
    for seq in sequences:
      for t in range(NUM_FRAMES):
        mode, ids, palette = _read(tmp_path / f"anno_{r}" / seq / f"{t:05d}.png")
        _, gt, _ = _read(davis_root / "Annotations_unsupervised" / "480p" / seq / f"{t:05d}.png")
        assert mode == "P"
        # Object k is id k + 1 in the ground truth and in the run; void pixels belong to none.
        np.testing.assert_array_equal(ids, np.where(gt == 255, 0, gt))
        colours = np.asarray(palette).reshape(-1, 3)
        assert len({tuple(c) for c in colours[:ids.max() + 1]}) == ids.max() + 1
  assert os.path.exists(tmp_path / "global_results-val.csv")
  assert os.path.exists(tmp_path / "anno_3" / "global_results-val.csv")


@pytest.mark.parametrize("dataset", ["a2d", "jhmdb"])
def test_sentence_oracle_scores_one(twins, tmp_path, dataset, capsys):
  config = _config(twins, dataset)
  results, _, printed = _evaluate(config, tmp_path, _oracle(twins, dataset, config), capsys)
  figures = results["figures"]
  for name in ("mAP 0.5:0.95", "AP 0.5", "top-1 mAP 0.5:0.95", "overall_iou", "mean_iou",
               "P@0.5", "P@0.9"):
    assert figures[name] == 1.0, name
  assert "mAP" in printed and _shapes_printed(printed) <= MAX_SHAPES
  with open(tmp_path / "coco_results.json") as f:
    detections = json.load(f)
  assert {d["category_id"] for d in detections} == {1}
  assert all(set(d["segmentation"]) == {"size", "counts"} for d in detections)


def _pycocotools_ap(gt_path, detections):
  gt = coco.COCO(str(gt_path))
  evaluation = cocoeval.COCOeval(gt, gt.loadRes(detections), "segm")
  evaluation.params.useCats = 0
  evaluation.evaluate()
  evaluation.accumulate()
  evaluation.summarize()
  return evaluation.stats[0]


def test_a2d_map_equals_pycocotools_on_the_written_results(twins, tmp_path):
  """Imperfect masks and scores: mAP (all queries, top-1) as pycocotools computes it from the
  written results against MTTR's ground-truth JSON of the synthetic release."""
  config = _config(twins, "a2d")
  results, _, _ = _evaluate(config, tmp_path, _oracle(twins, "a2d", config, shift=2))
  figures = results["figures"]
  gt_path = twins / "raw" / "a2d" / "a2d_sentences_test_annotations_in_coco_format.json"
  # loadRes adds fields to the detections it is given: each call reads the file afresh.
  detections = lambda: json.loads((tmp_path / "coco_results.json").read_text())
  assert 0 < figures["mAP 0.5:0.95"] < 1
  assert figures["mAP 0.5:0.95"] == pytest.approx(_pycocotools_ap(gt_path, detections()),
                                                  abs=1e-12)
  top = {}
  for d in detections():  # The last of tied top scores, as VD-IT datasets/a2d_eval.py picks it.
    if d["image_id"] not in top or d["score"] >= top[d["image_id"]]["score"]:
      top[d["image_id"]] = d
  assert figures["top-1 mAP 0.5:0.95"] == pytest.approx(
      _pycocotools_ap(gt_path, list(top.values())), abs=1e-12)


def test_refcoco_oracle_scores_one_per_subset(twins, tmp_path):
  config = _config(twins, "refcoco")
  results, _, _ = _evaluate(config, tmp_path, _oracle(twins, "refcoco", config))
  assert results["figures"]["refcoco/overall_iou"] == 1.0
  assert results["figures"]["refcoco/mean_iou"] == 1.0
  assert results["counts"]["videos_evaluated"] == 4


@pytest.mark.parametrize("dataset,exact,bucketed", [
    ("ytvos", [[6, 48, 64]], [[8, 64, 96]]),               # whole videos: frame bucket 8
    ("davis", [[1, 48, 64], [5, 48, 64]], [[5, 64, 96]])])  # windows of 5: 5 + 1 frames
def test_bucketed_shapes_give_the_exact_shapes_results(twins, tmp_path, dataset, exact, bucketed):
  """With a predictor that padding cannot change, bucketing changes nothing but the shapes."""
  runs = {}
  for mode in (True, False):
    config = _config(twins, dataset, exact_shapes=mode)
    runs[mode], _, _ = _evaluate(config, tmp_path / str(mode),
                                 _oracle(twins, dataset, config, shift=1))
  assert runs[True]["shapes"] == exact and runs[False]["shapes"] == bucketed
  assert runs[True]["figures"] == runs[False]["figures"]
  assert 0 < runs[True]["figures"]["J&F" if dataset == "ytvos" else "J&F-Mean"] < 1


def test_two_processes_write_the_results_of_one(twins, tmp_path, num_devices):
  """Two JAX processes (2 CPU devices each) and this one (8 devices) evaluate the same
  imperfect predictions through a jitted reduction over the global batch."""
  dataset, shift = "a2d", 2
  config = _config(twins, dataset)
  mesh = jax.make_mesh((num_devices,), ("data",))
  one, _, _ = _evaluate(config, tmp_path / "one",
                        eval_oracle.collective(_oracle(twins, dataset, config, shift), mesh))
  settings = {"coordinator": f"localhost:{subprocesses.free_port()}", "num_processes": 2,
              "dataset": dataset, "split": SPLITS[dataset], "raw": str(twins / "raw" / dataset),
              "shards_dir": str(twins / "shards" / dataset), "davis_dir": "",
              "out_dir": str(tmp_path / "two"), "shift": shift, "step": STEP}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", PYTHONPATH=root)
  workers = [subprocess.Popen([sys.executable, os.path.join(root, "tests", "eval_worker.py"),
                               json.dumps(settings), str(p)], env=env, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for p in range(2)]
  outputs = subprocesses.outputs(workers, timeout=120)
  assert "predict steps on each of 2 processes" in outputs[0]
  with open(tmp_path / "two" / "results.json") as f:
    two = json.load(f)
  assert two == one
  assert 0 < one["figures"]["mAP 0.5:0.95"] < 1
  for name in ("coco_results.json", "coco_ground_truth.json"):
    assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()


def test_a_skipped_video_is_counted(twins, tmp_path, capsys):
  """A record whose frame does not decode, skipped (skip_bad_records), is reported missing."""
  source = str(twins / "shards" / "ytvos")
  data = [d for path in shards.list_shards(source, "train") for d in shards.read_tfrecord(path)]
  bad = records.decode(data[0])
  bad = dataclasses.replace(bad, frames=(bad.frames[0][:100],) + bad.frames[1:])
  directory = shards.split_dir(str(tmp_path / "shards"), "train")
  os.makedirs(directory)
  with shards.ShardWriter(os.path.join(directory, shards.shard_name(0, 1, "tfrecord")),
                          "tfrecord") as writer:
    for record in [records.encode(bad)] + data[1:]:
      writer.write(record)
  shards.write_info(directory, {"shards": [dataclasses.asdict(writer.info)],
                                "format": "tfrecord"})
  config = _config(twins, "ytvos")
  config.data.update(shards_dir=str(tmp_path / "shards"), skip_bad_records=True)
  results, _, printed = _evaluate(config, tmp_path / "out", _oracle(twins, "ytvos", config),
                                  capsys)
  counts = results["counts"]
  assert (counts["videos_expected"], counts["videos_evaluated"], counts["videos_missing"]) == (
      3, 2, 1)
  assert "1 missing" in printed
  assert results["figures"]["J&F"] == 1.0


def test_in_training_evaluator(twins, tmp_path):
  """config.evals' A2D evaluator on the first video: prefixed figures and mask overlays."""
  config = _config(twins, "a2d")
  config.evals.a2d.data = config.data
  config.evals.a2d.eval = config.eval
  config.evals.a2d.update(num_videos=1, num_images=2, every_steps=5)
  (evaluator,) = in_training.make_evaluators(config, str(tmp_path))
  assert evaluator.queries == "all"
  assert [s for s in range(1, 16) if evaluator.due(s)] == [5, 10, 15]
  figures, images = evaluator.run(_oracle(twins, "a2d", config), step=5)
  assert figures["a2d/mAP 0.5:0.95"] == 1.0
  with open(tmp_path / "eval" / "a2d" / "results.json") as f:
    results = json.load(f)
  assert results["step"] == 5 and results["counts"]["videos_evaluated"] == 1
  assert sorted(images) == ["a2d/overlay_0", "a2d/overlay_1"]
  for image in images.values():
    assert image.shape == (*eval_config.SIZE, 3) and image.dtype == np.uint8


def test_resize_and_threshold_match_torch():
  """Probabilities back at the original size as VD-IT does it in torch: F.interpolate of the
  logits (bilinear, align_corners=False), then sigmoid > 0.5."""
  rng = np.random.default_rng(0)
  for (h, w), size in (((9, 13), (24, 31)), ((36, 64), (48, 85)), ((37, 61), (20, 30)),
                       ((45, 80), (480, 854))):
    logits = rng.normal(0, 4, (2, h, w)).astype(np.float32)
    reference = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], size=size,
                                                mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(original_size.resize_bilinear(logits, size), reference.numpy(),
                               rtol=0, atol=4e-6)
    probabilities = torch.sigmoid(torch.from_numpy(logits)).numpy()
    got = original_size.binary_at(probabilities, size, 0.5)
    want = (torch.sigmoid(reference) > 0.5).numpy()
    near_zero = np.abs(reference.numpy()) < 1e-4
    np.testing.assert_array_equal(got[~near_zero], want[~near_zero])


def test_davis_merge_matches_the_originals_torch_merge():
  """VD-IT inference_davis.py:255-262 in torch: sigmoid, < 0.5 zeroed, a 0.1 background
  channel, argmax."""
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (3, 20, 30)).astype(np.float32)
  masks = torch.sigmoid(torch.from_numpy(logits))
  masks[masks < 0.5] = 0.0
  reference = torch.argmax(torch.cat([0.1 * torch.ones(1, 20, 30), masks]), dim=0)
  np.testing.assert_array_equal(davis_runs.merge(logits, 0.5, 0.1), reference.numpy())


def test_predict_contract_violations_are_named():
  batch = {"frames": np.zeros((2, 3, 16, 16, 3), np.uint8), "window_valid": np.array([1, 0],
                                                                                     bool)}
  good = {"masks": np.zeros((2, 3, 16, 16)), "scores": np.zeros(2)}
  assert prediction.check_outputs(good, batch, "best")["masks"].dtype == np.float32
  bad = [({"masks": good["masks"]}, "keys 'masks' and 'scores'"),
         ({**good, "masks": np.zeros((2, 16, 16))}, r"masks must be \(2, 3, 16, 16\)"),
         ({**good, "scores": np.array([0.5, np.nan])}, None),
         ({**good, "scores": np.array([np.nan, 0.5])}, "NaN"),
         ({**good, "masks": np.full((2, 3, 16, 16), 2.0)}, r"probabilities in \[0, 1\]")]
  for outputs, message in bad:
    if message is None:  # A filler row may hold anything.
      prediction.check_outputs(outputs, batch, "best")
      continue
    with pytest.raises(ValueError, match=message):
      prediction.check_outputs(outputs, batch, "best")
  with pytest.raises(ValueError, match=r"masks must be \(2, Q, 3, 16, 16\) and scores \(2, Q\)"):
    prediction.check_outputs(good, batch, "all")


def _window(video, exp, shape, window=0, num_windows=1):
  n, h, w = shape
  return {"frames": np.zeros((1, n, h, w, 3), np.uint8), "video_id": np.array([video]),
          "exp_id": np.array([exp]), "window": np.array([window]),
          "num_windows": np.array([num_windows])}


def test_shape_batches_keep_processes_in_lockstep():
  """Three processes (threads) with different numbers and shapes of windows: each takes the
  same steps with the same shapes, and every window runs exactly once."""
  shapes = [(5, 8, 8), (5, 8, 16), (3, 8, 8)]
  rng = np.random.default_rng(0)
  windows = [[_window(f"p{p}v{i}", "0", shapes[rng.integers(len(shapes))]) for i in range(n)]
             for p, n in enumerate((7, 2, 0))]
  barrier = threading.Barrier(3)
  slots = [None] * 3

  def allgather(p):
    def sync(rows):
      slots[p] = rows
      barrier.wait()
      gathered = np.stack(slots)
      barrier.wait()
      return gathered
    return sync

  def filler(shape):
    return _window("", "", shape, num_windows=0)

  taken = [[] for _ in range(3)]

  def run(p):
    batches = shape_batches.ShapeBatches(iter(windows[p]), 2, filler, allgather(p))
    for batch, truths in batches:
      taken[p].append((batch["frames"].shape, [str(v) for v, real in zip(
          batch["video_id"], batch["window_valid"]) if real], len(truths)))

  threads = [threading.Thread(target=run, args=(p,)) for p in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=30)
  assert not any(t.is_alive() for t in threads)
  steps = [[shape for shape, _, _ in process] for process in taken]
  assert steps[0] == steps[1] == steps[2] and all(s[0] == 2 for s in steps[0])
  ran = sorted(v for process in taken for _, videos, _ in process for v in videos)
  assert ran == sorted(str(w["video_id"][0]) for process in windows for w in process)
  assert all(len(videos) == n for process in taken for _, videos, n in process)


def _result(exp, window, num_windows, frames, num_expressions=2):
  return assembly.WindowResult(
      split="valid", video_id="v", exp_id=exp, window=window, num_windows=num_windows,
      num_expressions=num_expressions, caption="c", orig_size=(4, 4),
      masks=np.full((len(frames), 2, 2), window, np.float32), scores=np.array([0.5]),
      frame_names=tuple(frames), annotated=np.ones(len(frames), bool), gt=None)


def test_assembler_joins_windows_in_any_order():
  assembler = assembly.VideoAssembler()
  assert assembler.add(_result("1", 1, 2, ["00002"])) == []
  assert assembler.add(_result("0", 0, 1, ["00000", "00001", "00002"])) == []
  assert assembler.incomplete() == [("valid", "v")]
  (video,) = assembler.add(_result("1", 0, 2, ["00000", "00001"]))
  assert [e.exp_id for e in video.expressions] == ["0", "1"]
  assert video.expressions[1].frame_names == ("00000", "00001", "00002")
  np.testing.assert_array_equal(video.expressions[1].masks[:, 0, 0], [0, 0, 1])
  assert assembler.incomplete() == []
  with pytest.raises(ValueError, match="after the video was complete"):
    assembler.add(_result("1", 0, 2, ["00000"]))


def test_eval_windows_exact_and_bucketed(twins):
  """Windows of 4 over 6 frames: exact 4 + 2 frames at 48 x 64 (the size divisor); bucketed
  4 + 4 (the last 2 repeating frame 5, invalid) at the 64 x 96 bucket; fillers have a
  window's fields."""
  for exact, lengths, size in ((True, [4, 2], (48, 64)), (False, [4, 4], (64, 96))):
    config = _config(twins, "ytvos", window=4, exact_shapes=exact)
    it = pipeline.make_eval_iter(config)
    windows = [next(it) for _ in range(2)]
    it.close()
    assert [w["frames"].shape[1] for w in windows] == lengths
    assert all(w["frames"].shape[2:4] == size for w in windows)
    np.testing.assert_array_equal(windows[1]["frame_indices"][0], [4, 5, 5, 5][:lengths[1]])
    np.testing.assert_array_equal(windows[1]["frame_valid"][0], [1, 1, 0, 0][:lengths[1]])
    assert windows[0]["gt_masks"].shape == (1, 4, *eval_config.SIZE)
    filler = eval_windows.EvalWindow(eval_windows.Preprocessing(**config.eval.preprocessing),
                                     False, None).filler((4, *size))
    assert set(filler) == set(windows[0]) - set(shape_batches.GROUND_TRUTH)
    assert not filler["pad_mask"].any() and filler["num_windows"][0] == 0
  with pytest.raises(errors.ConfigError, match="multiples of size_divisor 16"):
    eval_windows.Preprocessing(**{**config.eval.preprocessing, "size_buckets": ((60, 96),)})
