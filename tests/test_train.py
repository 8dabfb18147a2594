"""The training system's quick checks, in this process, on a toy model (tests/toy_model.py)
with VD-IT's contract: non-finite steps, logs, init_from, a backbone mismatch, export.
tests/test_train_vdit.py trains VD-IT itself: the mesh, resume, SIGTERM, two processes."""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import ytvos
from vdit_jax import checkpoints, errors, optim, sharding, train, train_state, train_step

import saved_state
import toy_model


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


@pytest.fixture(scope="module")
def on_mesh(num_devices):
  return _step_setup(jax.devices(), (("data", 2), ("fsdp", 4)))


def test_nonfinite_step_is_skipped_and_counted(on_mesh):
  rules, parts, fresh, step = on_mesh
  state = fresh()
  bad = dict(_batch(1))
  bad["target"] = bad["target"].copy()
  bad["target"][np.flatnonzero(bad["valid"])[0], 0] = np.nan  # One number of a valid row.
  before = saved_state.flat({"params": state["params"], "opt": state["opt"]})
  state, metrics = step(state, parts.frozen, parts.rest, rules.shard_batch(bad))
  assert not np.isfinite(float(metrics["loss"]))
  assert (int(metrics["nonfinite"]), int(metrics["nonfinite_total"]),
          int(metrics["nonfinite_in_row"])) == (1, 1, 1)
  after = saved_state.flat({"params": state["params"], "opt": state["opt"]})
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


@pytest.fixture(scope="module")
def straight(tmp_path_factory, num_devices):
  """The workdir of six steps."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  outcome = toy_model.run(workdir, toy_model.config(6))
  assert (outcome.step, outcome.preempted) == (6, False)
  return workdir


def test_logs_config_metrics_and_tensorboard(straight):
  workdir = straight
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


def _fresh_params(classes=4, seed=0):
  rules = sharding.Rules(sharding.make_mesh((("data", 2), ("fsdp", 4))),
                         **toy_model.config(1).sharding)
  return train_state.split(toy_model.make_model(rules, seed=seed, classes=classes)).params


def test_init_from_loads_trainable_params_only(straight):
  workdir = straight
  stored = saved_state.saved(workdir, 6, ["params"])["params"]
  fresh = _fresh_params(seed=1)
  loaded = checkpoints.load_trainable(os.path.join(workdir, "checkpoints", "LATEST"), fresh,
                                      skip=("class_embed",), backbone=toy_model.BACKBONE)
  np.testing.assert_array_equal(np.asarray(loaded["adapter"]["kernel"][...]),
                                stored["['adapter']['kernel']"])
  np.testing.assert_array_equal(np.asarray(loaded["class_embed"]["kernel"][...]),
                                np.asarray(fresh["class_embed"]["kernel"][...]))
  assert loaded["adapter"]["kernel"][...].sharding == fresh["adapter"]["kernel"][...].sharding


def test_init_from_starts_a_new_optimizer_and_step(straight, tmp_path):
  workdir = straight
  config = toy_model.config(1)
  config.init_from = workdir
  outcome = toy_model.run(str(tmp_path / "finetune"), config)
  assert outcome.step == 1 and int(outcome.state["step"]) == 1
  adam = outcome.state["opt"][1]
  assert int(adam.count) == 1


def test_init_from_reports_what_does_not_fit(straight):
  workdir = straight
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
  workdir = straight
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
  workdir = straight
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
  stored = saved_state.saved(workdir, 6, ["params"])["params"]
  flat = saved_state.flat(exported)
  assert flat.keys() == stored.keys()
  for key, value in flat.items():
    assert value.dtype == jnp.bfloat16
    np.testing.assert_array_equal(value, stored[key].astype(jnp.bfloat16))
