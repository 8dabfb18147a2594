"""The generic rename-and-transpose rules against torch.nn layers of the same shapes."""

import numpy as np
import pytest
import torch
from flax import nnx

from vdit_jax import abstract_build
from vdit_jax.convert import core

import parity


class Tiny(nnx.Module):
  """Names mirror the torch `_TorchTiny` state dict."""

  def __init__(self, rngs):
    self.proj = nnx.Linear(6, 4, rngs=rngs)
    self.blocks = nnx.List([nnx.Conv(4, 8, (3, 3), padding=1, rngs=rngs),
                            nnx.GroupNorm(8, num_groups=2, epsilon=1e-5, rngs=rngs)])
    self.temporal = nnx.Conv(8, 8, (3,), padding=1, rngs=rngs)
    self.embed = nnx.Embed(10, 6, rngs=rngs)

  def __call__(self, ids):
    """ids (B, H, W) int -> (B, H, W, 8)."""
    x = self.blocks[1](self.blocks[0](self.proj(self.embed(ids))))
    b, h, w, c = x.shape
    # Temporal conv over the H axis, standing in for a Conv3d (3, 1, 1) over frames.
    y = self.temporal(x.transpose(0, 2, 1, 3).reshape(b * w, h, c))
    return y.reshape(b, w, h, c).transpose(0, 2, 1, 3)


class _TorchTiny(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.proj = torch.nn.Linear(6, 4)
    self.blocks = torch.nn.ModuleList([torch.nn.Conv2d(4, 8, 3, padding=1),
                                       torch.nn.GroupNorm(2, 8, eps=1e-5)])
    self.temporal = torch.nn.Conv3d(8, 8, (3, 1, 1), padding=(1, 0, 0))
    self.embed = torch.nn.Embedding(10, 6)
    self.register_buffer("position_ids", torch.arange(3))

  def forward(self, ids):
    x = self.proj(self.embed(ids)).permute(0, 3, 1, 2)
    x = self.blocks[1](self.blocks[0](x))
    return self.temporal(x[:, :, :, :, None])[..., 0]


@pytest.fixture(scope="module")
def pair():
  torch.manual_seed(0)
  src = _TorchTiny().eval()
  for p in src.parameters():  # GroupNorm starts at 1/0: make every tensor informative.
    torch.nn.init.normal_(p)
  return src, Tiny(nnx.Rngs(0))


def _items(sd):
  return ((k, v.numpy()) for k, v in sd.items())


RULES = core.Rules(ignore=[r"position_ids"])


def test_converted_outputs_match_torch(pair):
  src, dst = pair
  params = core.convert_tensors(_items(src.state_dict()), abstract_build.param_shapes(dst), RULES)
  core.load_params(dst, params)
  ids = np.random.default_rng(0).integers(0, 10, size=(2, 5, 7))
  with torch.no_grad():
    ref = src(torch.from_numpy(ids)).permute(0, 2, 3, 1).numpy()
  out = np.asarray(dst(ids))
  parity.assert_close(out, ref)


def test_every_mismatch_is_reported(pair):
  src, dst = pair
  sd = {k: v.numpy() for k, v in src.state_dict().items()}
  del sd["proj.bias"]
  sd["extra.weight"] = np.zeros(3, np.float32)
  sd["blocks.0.weight"] = np.zeros((8, 4, 5, 5), np.float32)
  with pytest.raises(core.ConversionError) as err:
    core.convert_tensors(sd.items(), abstract_build.param_shapes(dst), RULES, what="tiny")
  assert err.value.missing == ["proj.bias"]
  assert err.value.unexpected == ["extra.weight"]
  assert len(err.value.mismatched) == 1 and "blocks.0.weight" in err.value.mismatched[0]
  assert "tiny" in str(err.value) and "proj.bias" in str(err.value)


def test_renames_apply_before_the_lookup(pair):
  src, dst = pair
  sd = {k.replace("proj.", "linear_in."): v.numpy() for k, v in src.state_dict().items()}
  rules = core.Rules(renames=[(r"^linear_in\.", "proj.")], ignore=[r"position_ids"])
  params = core.convert_tensors(sd.items(), abstract_build.param_shapes(dst), rules)
  np.testing.assert_array_equal(params[("proj", "kernel")], sd["linear_in.weight"].T)
