"""The README's tiny run end to end through the command line, on one CPU device: the synthetic
Ref-YouTube-VOS twin, its shards, two training steps with the in-training Ref-DAVIS17
evaluator, the export and the evaluation that writes the submission (the commands a new user
types, in a temporary directory)."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = f"--config={REPO}/configs/ytvos.py:tiny"


def _run(cwd, *args, timeout=900):
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="")
  run = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
  assert run.returncode == 0, f"{args}: exit {run.returncode}\n{run.stderr[-3000:]}"
  return run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """Data prepared as README's Quick start does, then two training steps."""
  root = tmp_path_factory.mktemp("e2e")
  for dataset, splits in (("ytvos", ("train", "valid")), ("davis", ("valid",))):
    _run(root, "data_pipelines.synthetic", "--dataset", dataset, "--out",
         f"data/synthetic/{dataset}")
    for split in splits:
      _run(root, "data_pipelines.build", "--dataset", dataset, "--raw",
           f"data/synthetic/{dataset}", "--split", split, "--out",
           f"data/synthetic_shards/{dataset}")
  _run(root, "vdit_jax.main", CONFIG, "--workdir=wd", "--config.schedule.max_steps=2",
       "--config.evals.davis.every_steps=2", "--config.evals.davis.num_videos=1")
  return root / "wd"


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


def test_export_then_evaluation_writes_the_submission(workdir):
  _run(workdir.parent, "vdit_jax.main", CONFIG, "--workdir=wd", "--mode=export")
  manifest = json.loads((workdir / "export" / "manifest.json").read_text())
  assert manifest["step"] == 2
  _run(workdir.parent, "vdit_jax.main", CONFIG, "--workdir=wd", "--mode=eval",
       "--config.eval.checkpoint=wd/export")
  out = workdir / "eval" / "ytvos"
  results = json.loads((out / "results.json").read_text())
  assert results["step"] == 2 and results["counts"]["videos_missing"] == 0
  with zipfile.ZipFile(out / "submission.zip") as archive:
    names = archive.namelist()
  assert names and all(n.startswith("Annotations/") for n in names)
  assert any(n.endswith(".png") for n in names)
