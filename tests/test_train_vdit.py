"""VD-IT at configs/ytvos.py:tiny trained by vdit_jax.train, each run a process of
tests/vdit_tiny.py: two processes of 4 fake CPU devices on a (data 2, fsdp 4) mesh against
one process on one device (the first step, and the step where a SIGTERM stops both), and a
SIGTERM then an exact resume. The runs share a persistent compilation cache, so each
distinct program compiles once."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vdit_jax import checkpoints, sharding, train_state
from vdit_jax.models import vdit

import saved_state
import subprocesses
import vdit_tiny

# The tests share two runs and the compilation cache: one xdist worker runs them.
pytestmark = pytest.mark.xdist_group("vdit_training")

COMMAND = os.path.join(vdit_tiny.REPO, "tests", "vdit_tiny.py")
STEPS = 6


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def _start(cache, workdir, *args, log):
  """tests/vdit_tiny.py in a subprocess, its output in the file `log`."""
  with open(log, "w") as out:
    return subprocess.Popen([sys.executable, COMMAND, f"--workdir={workdir}", *args],
                            env=subprocesses.env(cache), stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def _finish(procs, logs, timeout=600):
  """Waits for every process (killing all of them on a time-out); returns their output
  after asserting exit code 0."""
  try:
    for p in procs:
      p.wait(timeout=timeout)
  finally:
    for p in procs:
      p.kill()
  outputs = [log.read_text() for log in logs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def _wait_for_steps(metrics, procs, steps, timeout=600):
  deadline = time.monotonic() + timeout
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
    assert all(p.poll() is None for p in procs), "a run ended early"
    assert time.monotonic() < deadline, "the run did not start"
    time.sleep(0.1)


def _logged(workdir) -> list[dict]:
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


ONE_DEVICE = ("--devices=1", "--mesh=data:1,fsdp:1")


@pytest.fixture(scope="module")
def straight(cache, tmp_path_factory):
  """STEPS steps in one process on one device, a checkpoint after each: (workdir, batch
  digests)."""
  root = tmp_path_factory.mktemp("straight")
  record = root / "batches.txt"
  proc = _start(cache, root / "run", f"--max_steps={STEPS}", *ONE_DEVICE,
                "--checkpoint_every_steps=1", f"--keep={STEPS}", f"--record={record}",
                log=root / "log.txt")
  _finish([proc], [root / "log.txt"])
  return str(root / "run"), record.read_text().split()


@pytest.fixture(scope="module")
def two_processes(cache, tmp_path_factory):
  """Two processes of 4 CPU devices each (jax.distributed, gloo) on a (data 2, fsdp 4) mesh,
  the second sent SIGTERM after the first step: (workdir, step each says it stopped at)."""
  port = subprocesses.free_port()
  root = tmp_path_factory.mktemp("two_processes")
  logs = [root / f"log{i}.txt" for i in range(2)]
  procs = [_start(cache, root / "run", f"--max_steps={STEPS}", "--checkpoint_every_steps=1000",
                  "--devices=4", f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}", log=logs[i]) for i in range(2)]
  try:
    _wait_for_steps(root / "run" / "metrics.jsonl", procs, 1)
    procs[1].send_signal(signal.SIGTERM)
  finally:
    outputs = _finish(procs, logs)
  stopped = [int(out.split("done: step ")[1].split()[0]) for out in outputs]
  assert all("preempted True" in out for out in outputs), outputs[0][-2000:]
  return str(root / "run"), stopped


def test_a_step_on_the_mesh_equals_one_device(straight, two_processes):
  """The first step on the (data 2, fsdp 4) mesh of the two processes against one device:
  loss terms, norms and updated parameters."""
  (workdir, _), (mesh_workdir, _) = straight, two_processes
  got, want = _logged(mesh_workdir)[0], _logged(workdir)[0]
  for term in ("loss", "ce", "dice", "mask", "giou", "grad_norm", "update_norm"):
    np.testing.assert_allclose(got[term], want[term], rtol=1e-5, err_msg=term)
  saved_state.assert_equal(saved_state.saved(mesh_workdir, 1, ["params"]),
                           saved_state.saved(workdir, 1, ["params"]), rtol=1e-5, atol=1e-6)


def test_frozen_towers_are_split_four_ways(num_devices):
  config = vdit_tiny.config(1)
  rules = sharding.Rules(sharding.make_mesh(config.mesh), **config.sharding)
  frozen = train_state.split(vdit.build(config, rules=rules)).frozen
  total = sum(x.nbytes for x in jax.tree.leaves(frozen))
  held = sharding.per_device_bytes(frozen)
  assert len(held) == num_devices
  for device, nbytes in held.items():
    assert abs(nbytes - total / 4) <= 0.1 * total / 4, (device, nbytes, total)


def test_two_processes_stop_together_and_match_one(straight, two_processes):
  """Both processes stop at the step JAX's preemption sync point gives them, with a
  checkpoint there (and at the first step) holding each one's data iterator, and the
  parameters of one process on one device after the same global batches."""
  (workdir, _), (mesh_workdir, stopped) = straight, two_processes
  assert stopped[0] == stopped[1] < STEPS, stopped
  directory = checkpoints.checkpoint_dir(mesh_workdir)
  assert set(ocp.utils.checkpoint_steps(directory)) == {1, stopped[0]}
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(
      os.listdir(os.path.join(directory, str(stopped[0]), "data")))
  saved_state.assert_equal(saved_state.saved(mesh_workdir, stopped[0], ["params"]),
                           saved_state.saved(workdir, stopped[0], ["params"]), rtol=1e-5,
                           atol=1e-6)


def test_sigterm_then_resume_equals_the_straight_run(straight, cache, tmp_path):
  """SIGTERM after the first step: exit 0 with a checkpoint at the step reached; a new
  process resumes from it, and the end is the straight run's: the same batches, parameters,
  optimizer state and losses."""
  workdir, log, record = tmp_path / "run", tmp_path / "log.txt", tmp_path / "batches.txt"
  args = (f"--max_steps={STEPS}", *ONE_DEVICE, f"--record={record}")
  proc = _start(cache, workdir, *args, "--checkpoint_every_steps=1000", log=log)
  try:
    _wait_for_steps(workdir / "metrics.jsonl", [proc], 1)
    proc.send_signal(signal.SIGTERM)
  finally:
    out, = _finish([proc], [log])
  stopped = _logged(workdir)[-1]["step"]
  assert f"stopped at step {stopped}" in out and "preempted True" in out
  assert stopped < STEPS, "the signal came after the last step"
  assert max(ocp.utils.checkpoint_steps(checkpoints.checkpoint_dir(str(workdir)))) == stopped

  proc = _start(cache, workdir, *args, log=log)
  out, = _finish([proc], [log])
  assert f"training steps {stopped + 1}-{STEPS}" in out
  straight_dir, straight_batches = straight
  assert record.read_text().split() == straight_batches
  assert len(set(straight_batches)) == STEPS
  saved_state.assert_equal(saved_state.saved(str(workdir), STEPS),
                           saved_state.saved(straight_dir, STEPS), rtol=1e-6)
  logged, straight_logged = _logged(workdir), _logged(straight_dir)
  assert [m["step"] for m in logged] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([m["loss"] for m in logged],
                             [m["loss"] for m in straight_logged], rtol=1e-6)
