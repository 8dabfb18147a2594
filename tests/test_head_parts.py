"""The head's layers outside the deformable transformer vs PyTorch: FeatureResizer, MLP, the
dynamic mask convolution (grouped F.conv2d, as VD-IT models/diffvos_cross.py:457-551 runs
it) and MSO (models/decoder.py), the torch modules written below from the original; weights
move through vdit_jax.convert.core, which checks every name and shape."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from vdit_jax.convert import core
from vdit_jax.models import head_layers, mask_head, resize

import parity
from head_reference import TorchFeatureResizer, TorchMLP, TorchMSO, torch_dynamic_masks


def load_torch(make, src: torch.nn.Module) -> nnx.Module:
  """The module `make()` builds, with src's state dict and no renames: the NNX names must
  mirror torch's (core checks every key and shape)."""
  items = ((k, v.detach().numpy()) for k, v in src.state_dict().items())
  return core.build_with_weights(make, items, core.Rules(), "test")


def _count(make) -> int:
  shapes = nnx.state(nnx.eval_shape(make), nnx.Param)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def test_feature_resizer_matches_torch():
  src = parity.randomized(TorchFeatureResizer(12, 8, 0.1), 0.5, norm_scales_near_one=True)
  dst = load_torch(lambda: head_layers.FeatureResizer(12, 8, dropout=0.1, ln_eps=1e-12,
                                                      rngs=nnx.Rngs(0)), src)
  x = np.random.default_rng(0).normal(size=(2, 5, 12)).astype(np.float32)
  with torch.no_grad():
    ref = src(torch.from_numpy(x)).numpy()
  call = nnx.jit(lambda m, x: m(x))
  parity.assert_close(call(dst, x), ref)
  # Training mode: torch's inverted dropout, p = 0.1, on the normalised output.
  dst.train()
  dropped = np.asarray(call(dst, np.tile(x, (40, 1, 1))))
  kept = dropped != 0
  assert 0.05 < 1 - kept.mean() < 0.15
  np.testing.assert_allclose(dropped[kept], (np.tile(ref, (40, 1, 1)) / 0.9)[kept], rtol=1e-5,
                             atol=1e-5)


def test_mlp_matches_torch():
  src = parity.randomized(TorchMLP(6, 10, 4, 3), 0.5)
  dst = load_torch(lambda: head_layers.MLP(6, 10, 4, 3, rngs=nnx.Rngs(0)), src)
  x = np.random.default_rng(1).normal(size=(3, 2, 6)).astype(np.float32)
  with torch.no_grad():
    ref = src(torch.from_numpy(x)).numpy()
  parity.assert_close(nnx.jit(lambda m, x: m(x))(dst, x), ref)


def _spread(a) -> tuple[float, float]:
  a = np.asarray(a)
  return float(np.abs(a).max()), float(a.std())


def test_initialisation_follows_torch():
  """Torch's default Linear / Conv2d init and the controller's xavier-uniform + zero bias
  (diffvos_cross.py:189-192), compared by bound and spread with torch's own initialisers."""

  def build():  # one compiled initialisation instead of one eager dispatch per tensor
    rngs = nnx.Rngs(0)
    mso = mask_head.MSO(16, (32, 64), rngs=rngs)
    controller = head_layers.MLP(64, 64, 200, 3, rngs=rngs,
                                 kernel_init=nnx.initializers.xavier_uniform(),
                                 bias_init=nnx.initializers.zeros)
    resizer = head_layers.FeatureResizer(96, 32, dropout=0.1, ln_eps=1e-12, rngs=rngs)
    return (mso.conv1_1div8.kernel[...], mso.conv1_1div8.bias[...],
            controller.layers[2].kernel[...], resizer.fc.kernel[...],
            [layer.bias[...] for layer in controller.layers])

  *got, controller_biases = jax.jit(build)()
  torch.manual_seed(0)
  ref_conv, ref_linear = torch.nn.Conv2d(16 + 64, 16, 3), torch.nn.Linear(96, 32)
  ref = [ref_conv.weight, ref_conv.bias, torch.nn.init.xavier_uniform_(torch.empty(200, 64)),
         ref_linear.weight]
  for g, r in zip(got, ref):
    (got_max, got_std), (ref_max, ref_std) = _spread(g), _spread(r.detach())
    assert got_max <= ref_max * 1.05 and abs(got_std / ref_std - 1) < 0.25, (got_max, ref_max)
  assert not any(np.any(b) for b in controller_biases)


SIZES = np.array([[40, 58], [27, 33]], np.int32)  # unpadded (h, w) of each video


@pytest.mark.parametrize("layers,rel_coord", [(2, True), (3, False)])
def test_dynamic_mask_logits_match_grouped_conv(layers, rel_coord):
  b, t, q, h, w, c, channels = 2, 2, 3, 5, 8, 6, 16
  rng = np.random.default_rng(2)
  feats = rng.normal(size=(b, t, h, w, c)).astype(np.float32)
  count = mask_head.dynamic_param_count(c, channels, layers, rel_coord)
  params = (rng.normal(size=(b, t, q, count)) * 0.1).astype(np.float32)
  refs = rng.random((b, t, q, 2)).astype(np.float32)
  fn = jax.jit(functools.partial(mask_head.dynamic_mask_logits, layers=layers,
                                 channels=channels, rel_coord=rel_coord))
  got = fn(feats, params, refs, SIZES)
  with torch.no_grad():
    ref = torch_dynamic_masks(torch.from_numpy(feats).permute(0, 1, 4, 2, 3),
                              torch.from_numpy(params), torch.from_numpy(refs),
                              torch.from_numpy(SIZES), layers, channels, rel_coord)
  parity.assert_close(got, ref.permute(0, 1, 2, 4, 5, 3).numpy())
  # The stride-2 mask, as the original shuffles it (diffvos_cross.py:354).
  low = F.pixel_shuffle(ref.flatten(0, 2), 4)[:, 0].reshape(b, t, q, 4 * h, 4 * w)
  parity.assert_close(resize.pixel_shuffle(got, 4)[..., 0], low.numpy(), "stride-2 mask")


def test_dynamic_param_count_mismatch_is_named():
  with pytest.raises(ValueError, match="need 4416"):
    mask_head.dynamic_mask_logits(jnp.zeros((1, 1, 2, 2, 256)), jnp.zeros((1, 1, 1, 4400)),
                                  jnp.zeros((1, 1, 1, 2)), jnp.ones((1, 2), jnp.int32),
                                  layers=2, channels=16, rel_coord=True)


def test_mso_matches_torch():
  src = parity.randomized(TorchMSO(16, (8, 12)), 0.2)
  dst = load_torch(lambda: mask_head.MSO(16, (8, 12), rngs=nnx.Rngs(0)), src)
  rng = np.random.default_rng(3)
  masks = rng.normal(size=(2, 3, 5, 16)).astype(np.float32)
  coarse = rng.normal(size=(2, 3, 5, 12)).astype(np.float32)
  fine = rng.normal(size=(2, 6, 9, 8)).astype(np.float32)
  nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)
  with torch.no_grad():
    ref = src(nchw(masks), nchw(fine), nchw(coarse)).permute(0, 2, 3, 1).numpy()
  parity.assert_close(nnx.jit(lambda m, *a: m(*a))(dst, masks, (fine, coarse)), ref)
  with pytest.raises(ValueError, match="stride-8 features"):
    dst(masks, (fine, fine))


def test_full_size_parameter_counts():
  """The original's counts at VD-IT's sizes (hidden 256, mask_dim 256, 16 dynamic channels,
  2 controller layers, backbone channels 128 / 256 at strides 4 / 8)."""
  rngs = lambda: nnx.Rngs(0)
  params = mask_head.dynamic_param_count(256, 16, 2, rel_coord=True)
  assert params == 4416
  assert _count(lambda: mask_head.MSO(16, (128, 256), rngs=rngs())) == 64_576
  assert _count(lambda: head_layers.MLP(256, 256, params, 3, rngs=rngs())) == 1_266_496
  assert _count(lambda: head_layers.FeatureResizer(768, 256, dropout=0.1, ln_eps=1e-12,
                                                   rngs=rngs())) == 197_376
  assert _count(lambda: head_layers.MLP(256, 256, 4, 3, rngs=rngs())) == 132_612
