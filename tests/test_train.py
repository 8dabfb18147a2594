"""The training system on a toy model (tests/toy_model.py) with VD-IT's contract: the
sharded step against one device, exact resume across a process restart, SIGTERM, two
processes against one, non-finite steps, init_from, a backbone mismatch, export, logs."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import ytvos
from vdit_jax import checkpoints, errors, optim, sharding, train, train_state, train_step

import toy_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "tests", "toy_model.py")


def _step_setup(devices, mesh_axes):
  """The toy's rules, parts, a fresh train state maker and compiled step on a mesh of
  `devices`."""
  config = toy_model.config(1, mesh_axes)
  rules = sharding.Rules(sharding.make_mesh(config.mesh, devices), **config.sharding)
  model = toy_model.make_model(rules)
  model.train()
  parts = train_state.split(model)
  adamw, schedule = optim.make(config, toy_model.STEPS_PER_EPOCH)
  tx = adamw.direction()
  shardings = train_state.shardings(rules, tx, parts.params)
  step = train_step.make(parts, shardings, rules, loss_fn=toy_model.loss_fn, tx=tx,
                         schedule=schedule)
  return rules, parts, lambda: train_state.create(parts.params, tx, config.seed, shardings), step


def _batch(index=0):
  iterator = toy_model.make_data(0, 1, batch_size=8, seed=0)
  for _ in range(index):
    next(iterator)
  return next(iterator)


def _flat(state) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state))}


@pytest.fixture(scope="module")
def on_mesh(num_devices):
  return _step_setup(jax.devices(), (("data", 2), ("fsdp", 4)))


def test_step_on_the_mesh_equals_one_device_and_shards_the_towers(on_mesh):
  rules, parts, fresh, step = on_mesh
  single_rules, single_parts, single_fresh, single_step = _step_setup(
      jax.devices()[:1], (("data", 1), ("fsdp", 1)))
  state, metrics = step(fresh(), parts.frozen, parts.rest, rules.shard_batch(_batch()))
  single_state, single_metrics = single_step(single_fresh(), single_parts.frozen,
                                             single_parts.rest,
                                             single_rules.shard_batch(_batch()))
  np.testing.assert_allclose(float(metrics["loss"]), float(single_metrics["loss"]), rtol=1e-5)
  assert float(metrics["update_norm"]) > 0
  got, want = _flat(state["params"]), _flat(single_state["params"])
  assert got.keys() == want.keys()
  for key in got:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # The frozen towers are sharded four ways over fsdp (replicated over data): each device
  # holds a quarter of their bytes.
  total = sum(x.nbytes for x in jax.tree.leaves(parts.frozen))
  for device, held in sharding.per_device_bytes(parts.frozen).items():
    assert abs(held - total / 4) <= 0.1 * total / 4, (device, held, total)
  assert {k.split("'")[1] for k in got} == {"adapter", "class_embed"}


def test_nonfinite_step_is_skipped_and_counted(on_mesh):
  rules, parts, fresh, step = on_mesh
  state = fresh()
  bad = dict(_batch(1))
  bad["target"] = bad["target"].copy()
  bad["target"][np.flatnonzero(bad["valid"])[0], 0] = np.nan  # One number of a valid row.
  before = _flat({"params": state["params"], "opt": state["opt"]})
  state, metrics = step(state, parts.frozen, parts.rest, rules.shard_batch(bad))
  assert not np.isfinite(float(metrics["loss"]))
  assert (int(metrics["nonfinite"]), int(metrics["nonfinite_total"]),
          int(metrics["nonfinite_in_row"])) == (1, 1, 1)
  after = _flat({"params": state["params"], "opt": state["opt"]})
  for key in before:
    np.testing.assert_array_equal(after[key], before[key], err_msg=key)
  assert int(state["step"]) == 1
  state, metrics = step(state, parts.frozen, parts.rest, rules.shard_batch(_batch(2)))
  assert (int(metrics["nonfinite"]), int(metrics["nonfinite_total"]),
          int(metrics["nonfinite_in_row"])) == (0, 1, 0)
  assert float(metrics["update_norm"]) > 0


def test_nonfinite_steps_in_a_row_stop_the_run_naming_the_step(tmp_path, num_devices):
  config = toy_model.config(20)
  config.max_nonfinite_in_row = 3
  with pytest.raises(train.NonFiniteError, match=r"training stopped at step 5: .* in 3 steps "
                     r"in a row \(steps 3-5"):
    toy_model.run(str(tmp_path), config, poison_from=2)  # Batches 2, 3, 4 = steps 3, 4, 5.


def _saved(workdir: str, step: int, items=("params", "opt", "train")
           ) -> dict[str, dict[str, np.ndarray]]:
  """Array items of a checkpoint as numpy: params as stored, the others as saved."""
  manager = checkpoints.reader(checkpoints.checkpoint_dir(workdir))
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                          manager.item_metadata(step)["params"])
  args = dict(params=ocp.args.PyTreeRestore(restore_args=as_numpy),
              opt=ocp.args.StandardRestore(), train=ocp.args.StandardRestore())
  restored = manager.restore(step, args=ocp.args.Composite(**{k: args[k] for k in items}))
  manager.close()
  return {item: _flat(restored[item]) for item in items}


def _assert_saved_equal(a, b, rtol):
  for item in a:
    assert a[item].keys() == b[item].keys(), item
    for key in a[item]:
      np.testing.assert_allclose(a[item][key], b[item][key], rtol=rtol, atol=rtol,
                                 err_msg=f"{item}{key}")


def _toy_command(workdir, *args):
  return [sys.executable, TOY, f"--workdir={workdir}", *args]


def _env(**extra):
  return dict(os.environ, PYTHONPATH=REPO, **extra)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, num_devices):
  """Six steps in one go (in this process): (workdir, batch digests)."""
  workdir = tmp_path_factory.mktemp("straight")
  record = workdir / "batches.txt"
  outcome = toy_model.run(str(workdir / "run"), toy_model.config(6), record=str(record))
  assert (outcome.step, outcome.preempted) == (6, False)
  return str(workdir / "run"), record.read_text().split()


def test_resume_in_a_new_process_is_exact(straight, tmp_path):
  workdir, record = str(tmp_path / "run"), tmp_path / "batches.txt"
  first = toy_model.run(workdir, toy_model.config(3), record=str(record))
  assert first.step == 3
  resumed = subprocess.run(_toy_command(workdir, "--max_steps=6", f"--record={record}"),
                           env=_env(), capture_output=True, text=True, timeout=240)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "training steps 4-6" in resumed.stdout
  straight_dir, straight_batches = straight
  assert record.read_text().split() == straight_batches
  assert len(set(straight_batches)) == 6
  _assert_saved_equal(_saved(workdir, 6), _saved(straight_dir, 6), rtol=1e-6)
  logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  straight_logged = [json.loads(line) for line in open(os.path.join(straight_dir,
                                                                    "metrics.jsonl"))]
  assert [m["step"] for m in logged] == list(range(1, 7))
  assert [m["loss"] for m in logged] == [m["loss"] for m in straight_logged]


def test_logs_config_metrics_and_tensorboard(straight):
  workdir, _ = straight
  written = json.load(open(os.path.join(workdir, "config.json")))
  assert written["mesh"] == {"data": 2, "fsdp": 4} and written["devices"] == 8
  assert written["config"]["optimizer"]["lr"] == 1e-2
  logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert set(train_step.STEP_METRICS) | {"l1", "l2", "epoch"} <= set(logged[0])
  assert {"steps_per_s", "clips_per_s", "data_wait_s"} <= set(logged[1])
  # The schedule: lr x 0.1 from the second epoch (4 steps each) on.
  assert [round(m["lr"], 6) for m in logged] == [0.01] * 4 + [0.001] * 2
  for m in logged:
    np.testing.assert_allclose(m["loss"], m["l2"] + 0.5 * m["l1"], rtol=1e-5)
  assert [f for f in os.listdir(os.path.join(workdir, "tensorboard"))
          if f.startswith("events.out.tfevents")]
  # Every 2nd step (and the first), the last keep_checkpoints (3) of them kept.
  assert sorted(ocp.utils.checkpoint_steps(checkpoints.checkpoint_dir(workdir))) == [2, 4, 6]


def _start(workdir, *args, log):
  """The toy command in a subprocess, its output in the file `log`."""
  with open(log, "w") as out:
    return subprocess.Popen(_toy_command(workdir, *args), env=_env(), stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for_steps(metrics, procs, steps, timeout=180):
  deadline = time.monotonic() + timeout
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
    assert all(p.poll() is None for p in procs), "a run ended early"
    assert time.monotonic() < deadline, "the run did not start"
    time.sleep(0.2)


def test_sigterm_stops_with_a_restorable_checkpoint(tmp_path):
  workdir, log = tmp_path / "run", tmp_path / "log.txt"
  proc = _start(workdir, "--max_steps=100000", "--checkpoint_every_steps=100000", log=log)
  try:
    metrics = workdir / "metrics.jsonl"
    _wait_for_steps(metrics, [proc], 3)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
  finally:
    proc.kill()
  out = log.read_text()
  assert proc.returncode == 0, out[-3000:]
  last = json.loads(metrics.read_text().splitlines()[-1])
  stopped = last["step"]
  assert f"stopped at step {stopped}" in out and "preempted True" in out
  steps = ocp.utils.checkpoint_steps(checkpoints.checkpoint_dir(str(workdir)))
  assert max(steps) == stopped
  saved = _saved(str(workdir), stopped, ["params"])
  norm = np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in saved["params"].values()))
  np.testing.assert_allclose(norm, last["param_norm"], rtol=1e-5)
  # Restorable: the next run continues from it.
  outcome = toy_model.run(str(workdir), toy_model.config(stopped + 1))
  assert outcome.step == stopped + 1
  assert json.loads(metrics.read_text().splitlines()[-1])["step"] == stopped + 1


def test_two_processes_match_one_and_stop_together(tmp_path):
  """Two processes of 4 CPU devices each (jax.distributed, gloo) train until one gets
  SIGTERM: both stop at the same step with one checkpoint (JAX's preemption sync point), and
  its parameters are those of this process's 8 devices on the same mesh and global batches."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = tmp_path / "run"
  procs = [_start(workdir, "--max_steps=100000", "--checkpoint_every_steps=100000",
                  "--devices=4", f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}", log=tmp_path / f"log{i}.txt") for i in range(2)]
  try:
    _wait_for_steps(workdir / "metrics.jsonl", procs, 3)
    procs[1].send_signal(signal.SIGTERM)
    for p in procs:
      p.wait(timeout=120)
  finally:
    for p in procs:
      p.kill()
  logs = [(tmp_path / f"log{i}.txt").read_text() for i in range(2)]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  stopped = int(logs[0].split("done: step ")[1].split()[0])
  assert all(f"done: step {stopped} preempted True" in log for log in logs)
  directory = checkpoints.checkpoint_dir(str(workdir))
  assert set(ocp.utils.checkpoint_steps(directory)) == {1, stopped}  # The first and the stop.
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(
      os.listdir(os.path.join(directory, str(stopped), "data")))
  reference = str(tmp_path / "one")
  toy_model.run(reference, toy_model.config(stopped))
  _assert_saved_equal(_saved(str(workdir), stopped, ["params"]),
                      _saved(reference, stopped, ["params"]), rtol=1e-5)


def _fresh_params(classes=4, seed=0):
  rules = sharding.Rules(sharding.make_mesh((("data", 2), ("fsdp", 4))),
                         **toy_model.config(1).sharding)
  return train_state.split(toy_model.make_model(rules, seed=seed, classes=classes)).params


def test_init_from_loads_trainable_params_only(straight):
  workdir, _ = straight
  stored = _saved(workdir, 6, ["params"])["params"]
  fresh = _fresh_params(seed=1)
  loaded = checkpoints.load_trainable(os.path.join(workdir, "checkpoints", "LATEST"), fresh,
                                      skip=("class_embed",), backbone=toy_model.BACKBONE)
  np.testing.assert_array_equal(np.asarray(loaded["adapter"]["kernel"][...]),
                                stored["['adapter']['kernel']"])
  np.testing.assert_array_equal(np.asarray(loaded["class_embed"]["kernel"][...]),
                                np.asarray(fresh["class_embed"]["kernel"][...]))
  assert loaded["adapter"]["kernel"][...].sharding == fresh["adapter"]["kernel"][...].sharding


def test_init_from_starts_a_new_optimizer_and_step(straight, tmp_path):
  workdir, _ = straight
  config = toy_model.config(1)
  config.init_from = workdir
  outcome = toy_model.run(str(tmp_path / "finetune"), config)
  assert outcome.step == 1 and int(outcome.state["step"]) == 1
  adam = outcome.state["opt"][1]
  assert int(adam.count) == 1


def test_init_from_reports_what_does_not_fit(straight):
  workdir, _ = straight
  five_classes = _fresh_params(classes=5)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"class_embed/kernel: shape \(32, 4\) stored, \(32, 5\) expected"):
    checkpoints.load_trainable(workdir, five_classes, skip=(), backbone=toy_model.BACKBONE)
  loaded = checkpoints.load_trainable(workdir, five_classes, skip=("class_embed",),
                                      backbone=toy_model.BACKBONE)
  assert loaded["class_embed"]["kernel"][...].shape == (32, 5)
  with pytest.raises(errors.ConfigError, match="config.init_skip 'clas_embed' matches no"):
    checkpoints.load_trainable(workdir, five_classes, skip=("clas_embed",),
                               backbone=toy_model.BACKBONE)
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint found"):
    checkpoints.load_trainable(os.path.join(workdir, "checkpoints", "7"), five_classes,
                               skip=(), backbone=toy_model.BACKBONE)


def test_another_backbone_is_refused_naming_both(straight):
  workdir, _ = straight
  other = dict(toy_model.BACKBONE, seed=1)
  with pytest.raises(checkpoints.CheckpointError) as e:
    checkpoints.load_trainable(workdir, _fresh_params(), skip=(), backbone=other)
  assert '"seed": 0' in str(e.value) and '"seed": 1' in str(e.value)
  manager = checkpoints.Manager(workdir, every_steps=2, keep=3, backbone=other)
  with pytest.raises(checkpoints.CheckpointError, match="another frozen backbone"):
    manager.restore(6, target={}, data=None)  # Refused before anything is read.
  manager.close()
  converted = {"weights_dir": "/a", "manifest_sha256": "1" * 64}
  moved = {"weights_dir": "/b", "manifest_sha256": "1" * 64}
  checkpoints.check_backbone(converted, moved, "x")  # The same weights, moved elsewhere.
  with pytest.raises(checkpoints.CheckpointError, match="2222"):
    checkpoints.check_backbone(converted, dict(moved, manifest_sha256="2" * 64), "x")


def test_backbone_reference_is_the_manifest_digest_or_the_random_towers(tmp_path):
  manifest = b'{"format": "vdit-jax-backbone", "towers": {}}'
  (tmp_path / "manifest.json").write_bytes(manifest)
  config = ytvos.get_config()
  config.model.weights_dir = str(tmp_path)
  assert checkpoints.backbone_reference(config.model, 42) == {
      "weights_dir": str(tmp_path), "manifest_sha256": hashlib.sha256(manifest).hexdigest()}
  tiny = ytvos.get_config("tiny")
  reference = checkpoints.backbone_reference(tiny.model, 42)
  assert reference["seed"] == 42
  assert reference["random_towers"]["unet"]["block_out_channels"] == (32, 32, 64, 64)


def test_export_writes_params_config_and_backbone(straight):
  workdir, _ = straight
  config = toy_model.config(6)
  config.export_dtype = "bfloat16"
  out = checkpoints.export(workdir, config)
  assert out == os.path.join(workdir, "export")
  manifest = json.load(open(os.path.join(out, "manifest.json")))
  assert manifest["step"] == 6 and manifest["backbone"] == toy_model.BACKBONE
  assert manifest["dtype"] == "bfloat16"
  assert json.load(open(os.path.join(out, "config.json")))["export_dtype"] == "bfloat16"
  with ocp.PyTreeCheckpointer() as checkpointer:
    path = os.path.join(out, "params")
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                            checkpointer.metadata(path).item_metadata.tree)
    exported = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  stored = _saved(workdir, 6, ["params"])["params"]
  flat = _flat(exported)
  assert flat.keys() == stored.keys()
  for key, value in flat.items():
    assert value.dtype == jnp.bfloat16
    np.testing.assert_array_equal(value, stored[key].astype(jnp.bfloat16))
