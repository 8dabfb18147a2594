"""ms_deform_attn, MSDeformAttn and MultiheadAttention against PyTorch: F.grid_sample (the
original's ms_deform_attn_core_pytorch formulation), torch modules with the same weights, and
nn.MultiheadAttention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from vdit_jax import abstract_build
from vdit_jax.convert import core
from vdit_jax.models.deformable import MSDeformAttn, ms_deform_attn
from vdit_jax.models.multihead_attention import MultiheadAttention

import deformable_reference as ref
import parity

SHAPES = ((5, 7), (3, 4), (2, 3))  # non-square levels, S = 53


def _load(module: nnx.Module, torch_module: torch.nn.Module) -> nnx.Module:
  """The torch module's weights, through the project's converter with no renames."""
  items = ((k, v.detach().numpy()) for k, v in torch_module.state_dict().items())
  return core.load_params(module, core.convert_tensors(items, abstract_build.param_shapes(module),
                                                       core.Rules()))


def _split_call(module: nnx.Module, *args):
  """module(*args) through a compiled pure function of its state and the array arguments."""
  graphdef, state = nnx.split(module)
  arrays = [a for a in args if isinstance(a, (np.ndarray, jax.Array))]
  def fn(state, *arrays):
    it = iter(arrays)
    return nnx.merge(graphdef, state)(*(next(it) if isinstance(a, (np.ndarray, jax.Array))
                                        else a for a in args))
  return parity.compiled(fn, state, *arrays)(state, *arrays)


@pytest.fixture(scope="module")
def core_inputs():
  """Inputs with locations up to 0.3 outside [0, 1] and zeroed (padded) value positions."""
  rng = np.random.default_rng(0)
  b, heads, dh, lq, points = 2, 2, 4, 6, 3
  s = sum(h * w for h, w in SHAPES)
  value = rng.standard_normal((b, s, heads, dh)).astype(np.float32)
  value[rng.random((b, s)) < 0.2] = 0.0
  locations = rng.uniform(-0.3, 1.3, (b, lq, heads, len(SHAPES), points, 2)).astype(np.float32)
  weights = rng.random((b, lq, heads, len(SHAPES), points)).astype(np.float32)
  cotangent = rng.standard_normal((b, lq, heads * dh)).astype(np.float32)
  return value, locations, weights, cotangent


def _close_1e5(got, want, name):
  got, want = np.asarray(got), np.asarray(want)
  err, tol = np.abs(got - want).max(), 1e-5 * max(1.0, np.abs(want).max())
  assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:.3g}"


def test_ms_deform_attn_values_and_gradients_match_grid_sample(core_inputs):
  value, locations, weights, cotangent = core_inputs
  # Some locations outside on one side only: corners partly on the level, partly off it.
  assert (locations < 0).any() and (locations > 1).any()

  def value_and_grads(value, locations, weights, cotangent):
    out, pull = jax.vjp(lambda *a: ms_deform_attn(a[0], SHAPES, a[1], a[2]),
                        value, locations, weights)
    return out, pull(cotangent)

  out, grads = parity.compiled(value_and_grads, *core_inputs)(*core_inputs)
  t_inputs = [torch.tensor(x, requires_grad=True) for x in (value, locations, weights)]
  t_out = ref.grid_sample_attention(t_inputs[0], SHAPES, t_inputs[1], t_inputs[2])
  t_out.backward(torch.from_numpy(cotangent))
  _close_1e5(out, t_out.detach().numpy(), "output")
  for name, got, t in zip(("value", "locations", "weights"), grads, t_inputs):
    _close_1e5(got, t.grad.numpy(), f"grad {name}")


def test_ms_deform_attn_names_mismatched_shapes(core_inputs):
  value, locations, weights, _ = core_inputs
  with pytest.raises(ValueError, match="value has 50 positions"):
    ms_deform_attn(value[:, :50], SHAPES, locations, weights)
  with pytest.raises(ValueError, match="sampling_locations must be"):
    ms_deform_attn(value, SHAPES, locations[:, :, :, :2], weights)
  with pytest.raises(ValueError, match="attention_weights must be"):
    ms_deform_attn(value, SHAPES, locations, weights[..., :2])


@pytest.fixture(scope="module")
def attn_pair():
  """(MSDeformAttn, torch twin) with random weights: d=16, 3 levels, 2 heads, 3 points."""
  t = parity.randomized(ref.TorchMSDeformAttn(16, len(SHAPES), 2, 3), 0.3)
  return _load(MSDeformAttn(16, len(SHAPES), 2, 3, rngs=nnx.Rngs(0)), t), t


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_msdeformattn_matches_torch_with_points_boxes_and_padding(attn_pair, ref_dim):
  module, t_module = attn_pair
  rng = np.random.default_rng(ref_dim)
  n, lq, s = 2, 5, sum(h * w for h, w in SHAPES)
  query = rng.standard_normal((n, lq, 16)).astype(np.float32)
  src = rng.standard_normal((n, s, 16)).astype(np.float32)
  refs = rng.uniform(0.05, 0.95, (n, lq, len(SHAPES), ref_dim)).astype(np.float32)
  mask = rng.random((n, s)) < 0.25
  got = _split_call(module, query, refs, src, SHAPES, mask)
  with torch.no_grad():
    want = t_module(*map(torch.from_numpy, (query, refs, src)), SHAPES, torch.from_numpy(mask))
  parity.assert_close(got, want.numpy())


def test_msdeformattn_bf16_computes_the_sampling_in_fp32(attn_pair):
  module, t_module = attn_pair
  module_bf16 = MSDeformAttn(16, len(SHAPES), 2, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  nnx.update(module_bf16, nnx.state(module, nnx.Param))
  rng = np.random.default_rng(7)
  query = rng.standard_normal((1, 4, 16)).astype(np.float32)
  src = rng.standard_normal((1, 53, 16)).astype(np.float32)
  refs = rng.uniform(0, 1, (1, 4, len(SHAPES), 2)).astype(np.float32)
  got = _split_call(module_bf16, jnp.asarray(query, jnp.bfloat16), refs,
                    jnp.asarray(src, jnp.bfloat16), SHAPES)
  assert got.dtype == jnp.bfloat16
  with torch.no_grad():
    want = t_module(*(torch.from_numpy(x) for x in (query, refs, src)), SHAPES).numpy()
  # Only the bf16 rounding of the inputs and of the output is left.
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.05 * np.abs(want).max())


def test_msdeformattn_initialisation_is_the_originals():
  module = MSDeformAttn(32, 4, 8, 4, rngs=nnx.Rngs(0))
  # torch's float32 cos/sin put the bias up to 2e-6 off the exact grid.
  np.testing.assert_allclose(module.sampling_offsets.bias[...], ref.offset_bias(8, 4, 4).numpy(),
                             atol=1e-5)
  for linear in (module.sampling_offsets, module.attention_weights):
    assert not np.any(linear.kernel[...])
  for linear in (module.attention_weights, module.value_proj, module.output_proj):
    assert not np.any(linear.bias[...])
  bound = np.sqrt(6 / (32 + 32))  # torch.nn.init.xavier_uniform_
  for linear in (module.value_proj, module.output_proj):
    kernel = np.asarray(linear.kernel[...])
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound


def test_multihead_attention_matches_torch_with_key_padding_mask():
  t = parity.randomized(torch.nn.MultiheadAttention(16, 4, batch_first=True), 0.3)
  module = _load(MultiheadAttention(16, 4, rngs=nnx.Rngs(0)), t)
  rng = np.random.default_rng(3)
  query = rng.standard_normal((2, 3, 16)).astype(np.float32)
  key = rng.standard_normal((2, 5, 16)).astype(np.float32)
  value = rng.standard_normal((2, 5, 16)).astype(np.float32)
  mask = np.array([[False] * 5, [False, False, False, True, True]])
  got = _split_call(module, query, key, value, mask)
  with torch.no_grad():
    want, _ = t(*map(torch.from_numpy, (query, key, value)),
                key_padding_mask=torch.from_numpy(mask))
  parity.assert_close(got, want.numpy())
