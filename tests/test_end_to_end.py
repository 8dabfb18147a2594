"""The README's tiny run end to end through the command line, on one CPU device: the synthetic
Ref-YouTube-VOS twin, its shards, two training steps with the in-training Ref-DAVIS17
evaluator, the export, and the evaluation command of every benchmark on the export (the
commands a new user types, in a temporary directory), on one process and on two.

References: the COCO files the A2D / JHMDB evaluation writes, re-scored by pycocotools here;
the synthetic RefCOCO's own annotation JSON; the one-process run for the two-process one.
"""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image
from pycocotools import coco
from pycocotools import cocoeval
from pycocotools import mask as mask_utils
import pytest

import subprocesses

# The tests share one training run and its compilation cache: one xdist worker runs them.
pytestmark = pytest.mark.xdist_group("end_to_end")

REPO = subprocesses.REPO
# The splits each benchmark's twin is built for; A2D in 2 shards, so two processes can read it.
SPLITS = {"ytvos": ("train", "valid"), "davis": ("valid",), "a2d": ("test",),
          "jhmdb": ("test",), "refcoco": ("refcoco/val",)}
NUM_SHARDS = {"a2d": 2}


def _config(dataset):
  return f"--config={REPO}/configs/{dataset}.py:tiny"


def _env(cwd, **extra):
  """One CPU device per process (JAX's default), the runs' shared compilation cache."""
  return subprocesses.env(os.path.join(cwd, "jax_cache"), **extra)


def _run(cwd, *args, timeout=900):
  run = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=_env(cwd),
                       capture_output=True, text=True, timeout=timeout)
  assert run.returncode == 0, f"{args}: exit {run.returncode}\n{run.stderr[-3000:]}"
  return run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """Data prepared as README's Quick start does (every benchmark's twin), then two training
  steps."""
  root = tmp_path_factory.mktemp("e2e")
  for dataset, splits in SPLITS.items():
    _run(root, "data_pipelines.synthetic", "--dataset", dataset, "--out",
         f"data/synthetic/{dataset}")
    for split in splits:
      _run(root, "data_pipelines.build", "--dataset", dataset, "--raw",
           f"data/synthetic/{dataset}", "--split", split, "--out",
           f"data/synthetic_shards/{dataset}", "--num_shards", str(NUM_SHARDS.get(dataset, 1)))
  _run(root, "vdit_jax.main", _config("ytvos"), "--workdir=wd", "--config.schedule.max_steps=2",
       "--config.evals.davis.every_steps=2", "--config.evals.davis.num_videos=1")
  return root / "wd"


@pytest.fixture(scope="module")
def export(workdir):
  run = _run(workdir.parent, "vdit_jax.main", _config("ytvos"), "--workdir=wd", "--mode=export")
  assert "exported to wd/export" in run.stdout
  return workdir / "export"


@pytest.fixture(scope="module")
def evaluate(workdir, export):
  """dataset -> (results.json, printed output) of `--mode=eval` on the export, run once per
  dataset."""
  done = {}

  def run(dataset):
    if dataset not in done:
      printed = _run(workdir.parent, "vdit_jax.main", _config(dataset), "--workdir=wd",
                     "--mode=eval", f"--config.eval.checkpoint={export.relative_to(workdir.parent)}"
                     ).stdout
      with open(workdir / "eval" / dataset / "results.json") as f:
        done[dataset] = json.load(f), printed
    return done[dataset]

  return run


def test_training_logs_and_checkpoints(workdir):
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_lines = [l for l in lines if "loss" in l]
  assert [l["step"] for l in train_lines] == [1, 2]
  for line in train_lines:
    assert all(line[k] == line[k] for k in ("loss", "ce", "dice", "mask", "giou"))  # not NaN
    assert line["nonfinite_total"] == 0
  evaluated = [l for l in lines if any(k.startswith("davis/") for k in l)]
  assert [l["step"] for l in evaluated] == [2]
  assert (workdir / "eval" / "davis" / "results.json").exists()
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]


def test_in_training_davis_runs_are_palette_id_maps_of_the_sequences_objects(workdir):
  """The 4 annotator runs' PNGs, against the synthetic twin's ground truth read with PIL:
  palette images of every frame at its size, ids no larger than the sequence's object count;
  the reported J&F the mean of the runs'."""
  out = workdir / "eval" / "davis"
  gt_root = workdir.parent / "data/synthetic/davis/DAVIS/Annotations_unsupervised/480p"
  for run in range(4):
    run_dir = out / f"anno_{run}"
    (sequence,) = [d for d in os.listdir(run_dir) if (run_dir / d).is_dir()]
    frames = sorted(os.listdir(gt_root / sequence))
    assert sorted(os.listdir(run_dir / sequence)) == frames
    gt = np.stack([np.asarray(Image.open(gt_root / sequence / f)) for f in frames])
    written = [Image.open(run_dir / sequence / f) for f in frames]
    assert {(w.mode, w.size) for w in written} == {("P", (gt.shape[2], gt.shape[1]))}
    assert max(np.asarray(w).max() for w in written) <= gt[gt != 255].max()
  figures = json.loads((out / "results.json").read_text())["figures"]
  runs = [figures[f"anno_{run}/J&F-Mean"] for run in range(4)]
  assert figures["J&F-Mean"] == pytest.approx(sum(runs) / 4, rel=1e-12)


def test_export_then_evaluation_writes_the_submission(workdir, export, evaluate):
  manifest = json.loads((export / "manifest.json").read_text())
  assert manifest["step"] == 2
  results, _ = evaluate("ytvos")
  assert results["step"] == 2 and results["counts"]["videos_missing"] == 0
  with zipfile.ZipFile(workdir / "eval" / "ytvos" / "submission.zip") as archive:
    names = archive.namelist()
  assert names and all(n.startswith("Annotations/") for n in names)
  assert any(n.endswith(".png") for n in names)


def _top_mask_ious(ground_truth: coco.COCO, detections: list[dict]) -> tuple[float, float]:
  """Overall and mean IoU of each image's top-scoring detection (the last of tied scores), by
  decoding the written RLEs."""
  top = {}
  for d in detections:
    if d["image_id"] not in top or d["score"] >= top[d["image_id"]]["score"]:
      top[d["image_id"]] = d
  inters, unions = [], []
  for image_id, d in sorted(top.items()):
    pred = mask_utils.decode(d["segmentation"]).astype(bool)
    gt = np.zeros_like(pred)
    for a in ground_truth.imgToAnns[image_id]:
      gt |= ground_truth.annToMask(a).astype(bool)
    inters.append((pred & gt).sum())
    unions.append((pred | gt).sum())
  inters, unions = np.array(inters, np.float32), np.array(unions, np.float32)
  return float(inters.sum() / unions.sum()), float(np.mean((inters + 1e-6) / (unions + 1e-6)))


@pytest.mark.parametrize("dataset", ["a2d", "jhmdb"])
def test_sentence_benchmark_writes_coco_files_that_pycocotools_rescores(workdir, evaluate,
                                                                         dataset):
  results, printed = evaluate(dataset)
  out = workdir / "eval" / dataset
  assert results["step"] == 2 and results["counts"]["videos_missing"] == 0
  assert len(results["shapes"]) <= 8
  assert f"==== {dataset} test, step 2 ====" in printed and "compiled shapes" in printed
  ground_truth = coco.COCO(str(out / "coco_ground_truth.json"))
  with open(out / "coco_results.json") as f:
    detections = json.load(f)
  queries = len(detections) // len(ground_truth.getImgIds())
  assert queries > 1 and len(detections) == queries * len(ground_truth.getImgIds())
  evaluation = cocoeval.COCOeval(ground_truth, ground_truth.loadRes(detections), "segm")
  evaluation.params.useCats = 0
  evaluation.evaluate()
  evaluation.accumulate()
  evaluation.summarize()
  assert results["figures"]["mAP 0.5:0.95"] == pytest.approx(evaluation.stats[0], abs=1e-12)
  overall, mean = _top_mask_ious(ground_truth, detections)
  assert 0 < results["figures"]["overall_iou"] < 1
  assert results["figures"]["overall_iou"] == pytest.approx(overall, rel=1e-6)
  assert results["figures"]["mean_iou"] == pytest.approx(mean, rel=1e-6)


def test_refcoco_scores_every_expression_of_the_split(workdir, evaluate):
  results, printed = evaluate("refcoco")
  with open(workdir.parent / "data/synthetic/refcoco/coco/refcoco/instances_refcoco_val.json") as f:
    expressions = len(json.load(f)["images"])  # ReferFormer's layout: an image per expression.
  assert results["counts"]["windows"] == expressions
  assert f"RefCOCO: {expressions} samples" in printed
  figures = results["figures"]
  assert {"refcoco/overall_iou", "refcoco/mean_iou", "refcoco/P@0.5"} <= set(figures)
  assert 0 < figures["refcoco/mean_iou"] < 1


def test_two_processes_write_the_results_of_one(workdir, export, evaluate):
  """A2D through two JAX processes on localhost (one CPU device each, VAE latents sampled as
  by default) against the one-process run: the same results.json and masks; the scores
  differ at float32 rounding (XLA compiles the partitioned program differently)."""
  one, _ = evaluate("a2d")
  port = subprocesses.free_port()
  command = [sys.executable, "-m", "vdit_jax.main", _config("a2d"), "--workdir=wd2",
             "--mode=eval", f"--config.eval.checkpoint={export.relative_to(workdir.parent)}"]
  workers = [subprocess.Popen(command, cwd=workdir.parent, env=_env(
      workdir.parent, VDIT_DISTRIBUTED="1", VDIT_COORDINATOR=f"localhost:{port}",
      VDIT_NUM_PROCESSES="2", VDIT_PROCESS_ID=str(p)), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for p in range(2)]
  outputs = subprocesses.outputs(workers, timeout=600)
  assert "predict steps on each of 2 processes" in outputs[0]
  two_dir = workdir.parent / "wd2" / "eval" / "a2d"
  with open(two_dir / "results.json") as f:
    assert json.load(f) == one
  detections = [json.loads((d / "coco_results.json").read_text())
                for d in (workdir / "eval" / "a2d", two_dir)]
  assert [d["segmentation"] for d in detections[0]] == [d["segmentation"] for d in detections[1]]
  np.testing.assert_allclose([d["score"] for d in detections[1]],
                             [d["score"] for d in detections[0]], rtol=1e-5)
