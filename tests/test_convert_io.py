"""Streaming checkpoint readers against files written by safetensors, torch and diffusers."""

import copy
import json
import os
import pickle

import diffusers
import numpy as np
import pytest
import safetensors.torch
import torch

from vdit_jax.convert import io


def _state_dict():
  """Every dtype the backbone checkpoints use, plus the awkward shapes."""
  g = torch.Generator().manual_seed(0)
  return {
      "f32": torch.randn(3, 4, generator=g),
      "f16": torch.randn(2, 5, generator=g).half(),
      "bf16": torch.randn(4, 3, generator=g).bfloat16(),
      "i64": torch.arange(7),
      "flag": torch.tensor([True, False]),
      "scalar": torch.tensor(2.5),
      "empty": torch.zeros(0, 3),
  }


def _assert_same(items, expected):
  """Bit-exact equality of (key, numpy) pairs with a torch state dict, dtype included."""
  got = dict(items)
  assert sorted(got) == sorted(expected)
  for key, tensor in expected.items():
    ref = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
    assert got[key].shape == tuple(tensor.shape), key
    if tensor.dtype == torch.bfloat16:
      assert got[key].dtype.name == "bfloat16"
      np.testing.assert_array_equal(got[key].astype(np.float32), ref)
    else:
      assert got[key].dtype == ref.dtype, key
      np.testing.assert_array_equal(got[key], ref)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
  """A tiny diffusers AutoencoderKL saved four ways: plain, fp16 variant, sharded, .bin."""
  torch.manual_seed(0)
  vae = diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2,
                                layers_per_block=1).eval()
  root = tmp_path_factory.mktemp("vae")
  vae.save_pretrained(root / "plain")
  copy.deepcopy(vae).half().save_pretrained(root / "plain", variant="fp16")  # beside fp32
  vae.save_pretrained(root / "sharded", max_shard_size="20KB")
  vae.save_pretrained(root / "bin", safe_serialization=False)
  return vae.state_dict(), root


def test_safetensors_file_and_directory(tmp_path):
  sd = _state_dict()
  safetensors.torch.save_file(sd, tmp_path / "model.safetensors")
  _assert_same(io.iter_tensors(tmp_path / "model.safetensors"), sd)
  _assert_same(io.iter_tensors(tmp_path), sd)


def test_bin_weights_only_round_trip(tmp_path):
  sd = _state_dict()
  sd["transposed_view"] = sd["f32"].t()  # shares storage with f32, non-contiguous
  torch.save(sd, tmp_path / "pytorch_model.bin")
  _assert_same(io.iter_tensors(tmp_path), sd)


def test_bin_copies_out_of_the_memory_map(tmp_path):
  torch.save({"w": torch.ones(4)}, tmp_path / "w.pth")
  (_, array), = io.iter_tensors(tmp_path / "w.pth")
  array[0] = 5.0  # writable and private: the file is untouched
  assert torch.load(tmp_path / "w.pth", weights_only=True)["w"][0] == 1.0


def test_safetensors_preferred_over_bin(tmp_path):
  safetensors.torch.save_file({"w": torch.ones(2)}, tmp_path / "model.safetensors")
  torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
  assert io.find_weights(str(tmp_path)).endswith("model.safetensors")
  np.testing.assert_array_equal(dict(io.iter_tensors(tmp_path))["w"], np.ones(2, np.float32))


def test_diffusers_variants_sharding_and_bin(tiny_vae):
  sd, root = tiny_vae
  _assert_same(io.iter_tensors(root / "plain"), sd)
  _assert_same(io.iter_tensors(root / "plain", variant="fp16"),
               {k: v.half() for k, v in sd.items()})
  assert os.path.basename(io.find_weights(str(root / "sharded"))) == (
      "diffusion_pytorch_model.safetensors.index.json")
  assert len([n for n in os.listdir(root / "sharded") if n.endswith(".safetensors")]) > 1
  _assert_same(io.iter_tensors(root / "sharded"), sd)
  _assert_same(io.iter_tensors(root / "bin"), sd)


def test_sharded_transformers_index(tmp_path):
  sd = _state_dict()
  shards = {"model-00001-of-00002.safetensors": ["f32", "bf16", "flag"],
            "model-00002-of-00002.safetensors": ["f16", "i64", "scalar", "empty"]}
  for shard, keys in shards.items():
    safetensors.torch.save_file({k: sd[k] for k in keys}, tmp_path / shard)
  weight_map = {k: shard for shard, keys in shards.items() for k in keys}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  _assert_same(io.iter_tensors(tmp_path), sd)


def test_read_config(tmp_path):
  (tmp_path / "config.json").write_text('{"hidden_size": 8}')
  assert io.read_config(tmp_path) == {"hidden_size": 8}
  with pytest.raises(io.WeightFileError, match="no such directory"):
    io.read_config(tmp_path / "nope")
  with pytest.raises(io.WeightFileError, match="other.json: no such file"):
    io.read_config(tmp_path, "other.json")
  (tmp_path / "config.json").write_text('{"hidden_size": ')
  with pytest.raises(io.WeightFileError, match="config.json: not valid JSON"):
    io.read_config(tmp_path)


def test_missing_directory_and_no_weights(tmp_path):
  with pytest.raises(io.WeightFileError, match=f"{tmp_path / 'nope'}: no such"):
    list(io.iter_tensors(tmp_path / "nope"))
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(io.WeightFileError, match=r"no weights file \(found: config.json\)"):
    list(io.iter_tensors(tmp_path))
  safetensors.torch.save_file({"w": torch.ones(1)}, tmp_path / "model.fp16.safetensors")
  with pytest.raises(io.WeightFileError, match="no weights file"):
    list(io.iter_tensors(tmp_path))
  with pytest.raises(io.WeightFileError, match="no bf16 variant"):
    list(io.iter_tensors(tmp_path, variant="bf16"))


def test_ambiguous_non_standard_files(tmp_path):
  torch.save({"w": torch.ones(1)}, tmp_path / "a.pth")
  assert io.find_weights(str(tmp_path)).endswith("a.pth")
  torch.save({"w": torch.ones(1)}, tmp_path / "b.pth")
  with pytest.raises(io.WeightFileError, match=r"several candidate weights files \(a.pth, b.pth"):
    io.find_weights(str(tmp_path))


def test_truncated_safetensors(tmp_path):
  path = tmp_path / "model.safetensors"
  safetensors.torch.save_file(_state_dict(), path)
  data = path.read_bytes()
  path.write_bytes(data[:-10])
  with pytest.raises(io.WeightFileError, match=f"{path}: truncated safetensors file: .* ends at"):
    list(io.iter_tensors(path))
  path.write_bytes(data[:40])  # cut inside the JSON header
  with pytest.raises(io.WeightFileError, match=f"{path}: truncated or corrupt .* header claims"):
    list(io.iter_tensors(path))
  path.write_bytes(data[:5])
  with pytest.raises(io.WeightFileError, match=f"{path}: truncated safetensors file"):
    list(io.iter_tensors(path))


def test_corrupt_safetensors_header(tmp_path):
  path = tmp_path / "model.safetensors"
  header = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}'
  path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
  with pytest.raises(io.WeightFileError, match="'w' has 8 bytes for shape"):
    list(io.iter_tensors(path))
  header = b'{"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}'
  path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
  with pytest.raises(io.WeightFileError, match="corrupt header entry for 'w'"):
    list(io.iter_tensors(path))


def test_index_naming_a_missing_shard(tmp_path):
  safetensors.torch.save_file({"a": torch.ones(1)}, tmp_path / "model-00001-of-00002.safetensors")
  index = {"weight_map": {"a": "model-00001-of-00002.safetensors",
                          "b": "model-00002-of-00002.safetensors"}}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
  with pytest.raises(io.WeightFileError,
                     match="index names missing shard files: model-00002-of-00002"):
    next(io.iter_tensors(tmp_path))


def test_shard_lacking_an_indexed_key(tmp_path):
  safetensors.torch.save_file({"a": torch.ones(1)}, tmp_path / "model-00001-of-00001.safetensors")
  index = {"weight_map": {"a": "model-00001-of-00001.safetensors",
                          "b": "model-00001-of-00001.safetensors"}}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
  with pytest.raises(io.WeightFileError, match="lacks keys the index .* assigns to it: b"):
    list(io.iter_tensors(tmp_path))


def test_truncated_and_unsafe_bin(tmp_path):
  path = tmp_path / "pytorch_model.bin"
  torch.save(_state_dict(), path)
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(io.WeightFileError, match=f"{path}: cannot be read as a PyTorch zip"):
    list(io.iter_tensors(path))
  # weights_only refuses arbitrary pickled objects instead of running them.
  torch.save({"w": torch.ones(1), "opt": pickle.PickleError("x")}, path)
  with pytest.raises(io.WeightFileError, match="weights_only=True"):
    list(io.iter_tensors(path))
  torch.save({"w": torch.ones(1), "step": 3}, path)
  with pytest.raises(io.WeightFileError, match="'step' is a int, not a tensor"):
    list(io.iter_tensors(path))
