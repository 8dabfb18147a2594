"""The entry point: missing inputs name their path and command; overrides are type-checked."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(tmp_path, *args):
  cmd = [sys.executable, "-m", "vdit_jax.main", f"--workdir={tmp_path / 'wd'}", *args]
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_missing_dataset_names_path_and_command(tmp_path):
  run = _main(tmp_path, f"--config={REPO}/configs/ytvos.py")
  assert run.returncode != 0
  assert "data/shards/ytvos/train/dataset_info.json" in run.stderr
  assert ("python -m data_pipelines.build --dataset ytvos --raw data/ref-youtube-vos "
          "--split train --out data/shards/ytvos") in run.stderr


def _fake_shards(tmp_path, split):
  path = tmp_path / "data" / "shards" / "ytvos" / split
  path.mkdir(parents=True)
  (path / "dataset_info.json").write_text(json.dumps({}))


def test_missing_backbone_after_data(tmp_path):
  _fake_shards(tmp_path, "train")
  run = _main(tmp_path, f"--config={REPO}/configs/ytvos.py")
  assert run.returncode != 0
  assert "weights/backbone/manifest.json" in run.stderr
  assert "python -m vdit_jax.convert backbone" in run.stderr


def test_eval_needs_a_checkpoint(tmp_path):
  _fake_shards(tmp_path, "valid")
  (tmp_path / "weights" / "backbone").mkdir(parents=True)
  (tmp_path / "weights" / "backbone" / "manifest.json").write_text("{}")
  run = _main(tmp_path, f"--config={REPO}/configs/ytvos.py", "--mode=eval")
  assert run.returncode != 0
  assert str(tmp_path / "wd" / "checkpoints") in run.stderr
  assert "--mode=train" in run.stderr


def test_tiny_points_at_the_synthetic_data_commands(tmp_path):
  run = _main(tmp_path, f"--config={REPO}/configs/ytvos.py:tiny")
  assert run.returncode != 0
  assert ("python -m data_pipelines.synthetic --dataset ytvos --out data/synthetic/ytvos"
          in run.stderr)


@pytest.mark.parametrize("override", [
    "--config.data.cycle_length=8", "--config.data.num_epochs=3",
    "--config.data.buckets=((96, 96), (128, 128))", "--config.data.augmentation.flip_prob=0",
    "--config.data.text.roberta_max_length=64", "--config.eval.preprocessing.window=8"])
def test_data_fields_override_from_the_command_line(tmp_path, override):
  """Every pipeline setting is declared in the config, so a flag reaches it; the export run
  then stops at its first missing input, the checkpoint."""
  run = _main(tmp_path, f"--config={REPO}/configs/ytvos.py:tiny", override, "--mode=export")
  assert run.returncode == 1, run.stderr
  assert "trained checkpoint not found" in run.stderr


@pytest.mark.parametrize("override, error", [
    ("--config.optimizer.lrr=1e-4", "Did you mean"),
    ("--config.data.cycle_lenght=8", "Did you mean"),
    ("--config.data.cycle_length=many", "config.data.cycle_length"),
    ("--config.optimizer.lr=abc", "config.optimizer.lr"),
])
def test_bad_overrides_fail(tmp_path, override, error):
  run = _main(tmp_path, f"--config={REPO}/configs/ytvos.py", override)
  assert run.returncode != 0 and error in run.stderr
  assert "Traceback" not in run.stderr, run.stderr


def test_config_field_typo_is_one_message(tmp_path):
  run = _main(tmp_path, f"--config={REPO}/configs/ytvos.py:tiny", "--config.data.batch_size=4",
              "--config.data.shuffle_windw=3")
  assert run.returncode == 1
  assert run.stderr.startswith("FATAL Flags parsing error: --config.data.shuffle_windw: the "
                               "config has no field 'shuffle_windw'. Did you mean "
                               '"shuffle_window" instead of "shuffle_windw"?'), run.stderr
  assert len(run.stderr.splitlines()) == 2


def test_two_processes_join_the_distributed_runtime(tmp_path):
  """VDIT_DISTRIBUTED=1 with an explicit coordinator, as on a cluster without auto-detection."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = []
  for pid in range(2):
    env = dict(os.environ, PYTHONPATH=REPO, VDIT_DISTRIBUTED="1",
               VDIT_COORDINATOR=f"127.0.0.1:{port}", VDIT_NUM_PROCESSES="2",
               VDIT_PROCESS_ID=str(pid), XLA_FLAGS="")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "vdit_jax.main", f"--config={REPO}/configs/ytvos.py",
         f"--workdir={tmp_path / 'wd'}", "--logtostderr"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for pid, proc in enumerate(procs):
    _, err = proc.communicate(timeout=120)
    assert f"process {pid} of 2 joined" in err
    assert proc.returncode == 1 and "dataset_info.json" in err


def test_refcoco_needs_every_subset(tmp_path):
  for subset in ("refcoco", "refcoco+"):
    path = tmp_path / "data" / "shards" / "refcoco" / subset / "train"
    path.mkdir(parents=True)
    (path / "dataset_info.json").write_text("{}")
  run = _main(tmp_path, f"--config={REPO}/configs/refcoco.py")
  assert run.returncode != 0
  assert "data/shards/refcoco/refcocog/train/dataset_info.json" in run.stderr
  assert "--split refcocog/train --out data/shards/refcoco" in run.stderr
