"""Mesh and sharding rules: hand-worked specs per rule, errors naming the field, batches
split in mesh order, and a converted tower read straight into its rule shardings."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import orbax.checkpoint as ocp

from configs import common
from vdit_jax import backbone_format, errors, pretrained, sharding, towers


@pytest.fixture(scope="module")
def mesh(num_devices):
  return sharding.make_mesh((("data", 2), ("fsdp", -1)))


def _rules(mesh, rules, min_shard_bytes=0):
  return sharding.Rules(mesh, rules=rules, min_shard_bytes=min_shard_bytes,
                        batch_axes=("data", "fsdp"))


def _x(*shape, dtype=np.float32):
  return jax.ShapeDtypeStruct(shape, dtype)


def test_mesh_fills_the_minus_one_axis_with_auto_axes(mesh):
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 2
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


@pytest.mark.parametrize("axes, error", [
    ((("data", -1), ("fsdp", -1)), "at most one -1"),
    ((("data", 3), ("fsdp", -1)), "not a multiple of 3"),
    ((("data", 2), ("fsdp", 2)), "has 4 devices, but there are 8"),
    ((("data", 2), ("data", 4)), "distinct axis names"),
])
def test_bad_meshes_name_config_mesh(num_devices, axes, error):
  with pytest.raises(errors.ConfigError, match=error) as e:
    sharding.make_mesh(axes)
  assert "config.mesh" in str(e.value)


def test_largest_rule_shards_the_largest_divisible_dimension(mesh):
  rules = _rules(mesh, [("towers/.*", "largest:fsdp"), (".*", ())], min_shard_bytes=1024)
  # 4 x 4 bytes (16 B) stays whole; (3, 3, 64, 128): the 128 output channels;
  # (128, 128): equal sizes, the last; (6, 1001): nothing divisible by 4; (3, 1200, 5): 1200.
  assert rules.spec(("towers", "unet", "bias"), _x(4)) == P()
  assert rules.spec(("towers", "unet", 0, "kernel"), _x(3, 3, 64, 128)) == P(
      None, None, None, "fsdp")
  assert rules.spec(("towers", "a"), _x(128, 128)) == P(None, "fsdp")
  assert rules.spec(("towers", "b"), _x(6, 1001)) == P()
  assert rules.spec(("towers", "c"), _x(3, 1200, 5)) == P(None, "fsdp")
  # bfloat16 halves the bytes: 512 x 2 B is exactly the threshold.
  assert rules.spec(("towers", "d"), _x(512, dtype=np.dtype("bfloat16"))) == P("fsdp")
  assert rules.spec(("towers", "d"), _x(508, dtype=np.dtype("bfloat16"))) == P()
  # Not under towers/: the catch-all replicates.
  assert rules.spec(("head", "kernel"), _x(3, 3, 64, 128)) == P()


def test_first_matching_rule_wins_and_explicit_specs_are_checked(mesh):
  rules = _rules(mesh, [("head/class_embed/.*", (None, ("data", "fsdp"))),
                        ("head/.*", ("data",)), (".*", ())])
  assert rules.spec(("head", "class_embed", "kernel"), _x(4, 16)) == P(None, ("data", "fsdp"))
  assert rules.spec(("head", "proj", "kernel"), _x(4, 16)) == P("data")
  with pytest.raises(errors.ConfigError, match=r"does not fit head/class_embed/kernel \(4, 12\)"):
    rules.spec(("head", "class_embed", "kernel"), _x(4, 12))
  with pytest.raises(errors.ConfigError, match="more entries than head/bias has dimensions"):
    _rules(mesh, [("head/.*", (None, "data"))]).spec(("head", "bias"), _x(4))
  with pytest.raises(errors.ConfigError, match="no config.sharding.rules entry matches the "
                     "parameter towers/unet/kernel"):
    _rules(mesh, [("head/.*", ())]).spec(("towers", "unet", "kernel"), _x(4))
  with pytest.raises(errors.ConfigError, match="'largest:AXIS' with AXIS one of"):
    _rules(mesh, [(".*", "largest:model")]).spec(("a",), _x(4))
  with pytest.raises(errors.ConfigError, match="batch_axes names"):
    sharding.Rules(mesh, rules=[], min_shard_bytes=0, batch_axes=("batch",))


def test_shard_batch_splits_rows_in_mesh_order_and_leaves_strings(mesh):
  rules = _rules(mesh, [(".*", ())])
  frames = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  batch = rules.shard_batch({"frames": frames, "valid": np.ones(8, bool),
                             "caption": np.array(["a"] * 8)})
  assert set(batch) == {"frames", "valid"}
  shards = {s.device: np.asarray(s.data) for s in batch["frames"].addressable_shards}
  for row, device in enumerate(mesh.devices.flat):
    np.testing.assert_array_equal(shards[device], frames[row:row + 1])


def test_tree_and_put_place_params_by_rule_and_the_rest_replicated(mesh):
  class Towers(nnx.Module):
    def __init__(self, rngs):
      self.proj = nnx.Linear(8, 16, rngs=rngs)
      self.dropout = nnx.Dropout(0.1, rngs=rngs)

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.towers = Towers(rngs)
      self.head = nnx.Linear(16, 4, rngs=rngs)

  rules = _rules(mesh, [("towers/.*", "largest:fsdp"), (".*", ())])
  state = nnx.state(Model(nnx.Rngs(0, dropout=1)))
  placed = sharding.put(state, rules.tree(state))
  assert placed["towers"]["proj"]["kernel"].get_value().sharding.spec == P(None, "fsdp")
  assert placed["head"]["kernel"].get_value().sharding.spec == P()
  key = placed["towers"]["dropout"]["rngs"]["key"].get_value()
  assert key.sharding.spec == P() and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(
      state["towers"]["dropout"]["rngs"]["key"].get_value()))


def _write_converted_vae(directory):
  """A converted directory holding one random tiny VAE encoder (backbone_format layout)."""
  arch = common.tiny_random_towers().vae_encoder
  vae = towers.random_towers({"vae_encoder": arch}, common.towers())["vae_encoder"]
  os.makedirs(os.path.join(directory, "vae_encoder"))
  with open(backbone_format.manifest_path(directory), "w", encoding="utf-8") as f:
    json.dump({"format": backbone_format.FORMAT,
               "format_version": backbone_format.FORMAT_VERSION,
               "towers": {"vae_encoder": {}}}, f)
  with open(backbone_format.config_path(directory, "vae_encoder"), "w", encoding="utf-8") as f:
    json.dump(vae.config.to_dict(), f)
  values = {path: np.asarray(var[...])
            for path, var in nnx.to_flat_state(nnx.state(vae, nnx.Param))}
  with pretrained.params_checkpointer() as checkpointer:
    checkpointer.save(backbone_format.params_path(directory, "vae_encoder"),
                      args=ocp.args.PyTreeSave(pretrained.nest(values)))
  return values


def test_load_backbone_reads_each_parameter_into_its_rule_sharding(mesh, tmp_path):
  directory = str(tmp_path / "backbone")
  values = _write_converted_vae(directory)
  rules = _rules(mesh, [("towers/vae_encoder/quant_conv/.*", ()),
                        ("towers/.*", "largest:fsdp")])
  vae = pretrained.load_backbone(directory, {"vae_encoder": common.towers().vae_encoder},
                                 shardings=rules.within("towers"))["vae_encoder"]
  loaded = dict(nnx.to_flat_state(nnx.state(vae, nnx.Param)))
  expected = {("encoder", "conv_in", "kernel"): P(None, None, None, "fsdp"),  # (3, 3, 3, 16)
              ("encoder", "mid_block", "attentions", 0, "to_q", "kernel"): P(None, "fsdp"),
              ("encoder", "conv_out", "bias"): P("fsdp"),  # (8,)
              ("quant_conv", "kernel"): P()}
  for path, spec in expected.items():
    assert loaded[path][...].sharding.spec == spec, path
  for path, value in values.items():
    np.testing.assert_array_equal(np.asarray(loaded[path][...]), value)
  # Everything but quant_conv divides by 4: each device holds a quarter of the rest.
  quant = sum(v.nbytes for p, v in values.items() if p[0] == "quant_conv")
  total = sum(v.nbytes for v in values.values())
  held = sharding.per_device_bytes([v[...] for v in loaded.values()])
  assert set(held.values()) == {(total - quant) // 4 + quant}
