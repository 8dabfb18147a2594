"""UNet3D parity with diffusers' PyTorch UNet3DConditionModel, weights moved by the converter.

Tiny random configs; every jitted forward is built once per module (XLA compile time
dominates on 2 cores) and shared by the tests that need it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet3DConditionModel as TorchUNet3D
from diffusers.models.resnet import TemporalConvLayer as TorchTemporalConv
from diffusers.models.transformers.transformer_2d import Transformer2DModel as Torch2D
from diffusers.models.transformers.transformer_temporal import (
    TransformerTemporalModel as TorchTemporal)
from flax import nnx

from vdit_jax import abstract_build, pretrained
from vdit_jax.convert import backbone, core
from vdit_jax.convert.diffusers import UNET3D_RULES, unet3d_from_diffusers
from vdit_jax.models import transformer_blocks, unet3d_layers
from vdit_jax.models.unet3d import (MODELSCOPE_CONFIG, TAP_NAMES, UNet3DConditionModel,
                                   UNet3DConfig, per_frame_context)

import parity

# ModelScope's four-level layout at toy widths; one layer per block.
CFG_FOUR_LEVELS = dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1,
                       norm_num_groups=4, cross_attention_dim=12, attention_head_dim=8)
# Three levels, two layers per block, 3 heads at the middle level.
CFG_THREE_LEVELS = dict(
    block_out_channels=(16, 24, 32), layers_per_block=2, norm_num_groups=4,
    cross_attention_dim=12, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"))
# One level, for the dropout and remat tests (no taps needed).
CFG_ONE_LEVEL = dict(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
                     cross_attention_dim=12, attention_head_dim=8,
                     down_block_types=("CrossAttnDownBlock3D",),
                     up_block_types=("CrossAttnUpBlock3D",))
BF16_TOLERANCE = 6e-2
CONTEXT_LEN = 5
TIMESTEP = 7


def _torch_unet(cfg: dict, seed: int) -> TorchUNet3D:
  """A diffusers UNet3D with every parameter random (norm scales around 1), eval mode."""
  torch.manual_seed(seed)
  return parity.randomized(TorchUNet3D(**cfg), 0.05, seed=seed, norm_scales_near_one=True)


def _to_torch(x: np.ndarray) -> torch.Tensor:
  """(B, F, H, W, C) -> torch (B, C, F, H, W)."""
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))


def _from_frames(t: torch.Tensor, b: int) -> np.ndarray:
  """torch (B*F, C, h, w) -> (B, F, h, w, C)."""
  x = t.detach().numpy()
  return x.reshape((b, -1) + x.shape[1:]).transpose(0, 1, 3, 4, 2)


def _torch_forward(model: TorchUNet3D, sample: np.ndarray, context: np.ndarray, *,
                   per_frame: bool = True, skip_temporal: bool = False, taps: bool = True):
  """diffusers forward with tap hooks on context (B, F, L, D).

  per_frame: feed each frame its own context through pre-hooks on the blocks; otherwise
    diffusers repeats context[:, 0] over the frames itself.

  skip_temporal: make transformer_in, temp_convs and temp_attentions identities (VD-IT's
  single-frame behaviour).
  taps: also return the taps (torch layout converted to (B, F, h, w, C)).
  """
  b = sample.shape[0]
  frame_context = torch.from_numpy(context.reshape((-1,) + context.shape[2:]))
  tapped, handles = {}, []

  def use_frame_context(_, args, kwargs):
    if "encoder_hidden_states" in kwargs:
      kwargs["encoder_hidden_states"] = frame_context
    return args, kwargs

  def tap(name, index=None):
    def hook(_, __, out):
      tapped[name] = _from_frames(out if index is None else out[index], b)
    return hook

  blocks = list(model.down_blocks) + [model.mid_block] + list(model.up_blocks)
  if per_frame:
    handles += [blk.register_forward_pre_hook(use_frame_context, with_kwargs=True)
                for blk in blocks]
  if skip_temporal:
    identity = lambda _, args, out: (args[0],) if isinstance(out, tuple) else args[0]
    temporal = [model.transformer_in] + [m for blk in blocks for m in (
        list(blk.temp_convs) + list(getattr(blk, "temp_attentions", [])))]
    handles += [m.register_forward_hook(identity) for m in temporal]
  if taps:
    handles.append(model.transformer_in.register_forward_hook(tap("transformer_in", 0)))
    for i in (0, 1):
      handles.append(model.down_blocks[i].register_forward_hook(tap(f"down{i}", 0)))
    for i in (0, 1, 2):
      handles.append(model.up_blocks[i].register_forward_hook(tap(f"up{i}")))
  with torch.no_grad():
    out = model(_to_torch(sample), TIMESTEP, torch.from_numpy(context[:, 0])).sample
  for h in handles:
    h.remove()
  return out.numpy().transpose(0, 2, 3, 4, 1), tapped


def _jitted(model: nnx.Module, sample, context, *, output: bool = True):
  """(sample, context) -> (model(sample, TIMESTEP, context) or None, model.features(...)),
  compiled once."""

  def forward(st, x, ctx):
    m = nnx.merge(graphdef, st)
    return m(x, TIMESTEP, ctx) if output else None, m.features(x, TIMESTEP, ctx)

  graphdef, state = nnx.split(model)
  return functools.partial(parity.compiled(forward, state, sample, context), state)


@pytest.fixture(scope="module")
def three_levels_converted(tmp_path_factory):
  """(torch model, a backbone directory holding its conversion by `convert backbone`)."""
  torch_model = _torch_unet(CFG_THREE_LEVELS, seed=1)
  root = tmp_path_factory.mktemp("three_levels")
  torch_model.save_pretrained(root / "modelscope" / "unet")
  out = root / "backbone"
  backbone.convert_backbone({"modelscope": str(root / "modelscope")}, out, tokenizers={},
                            towers_to_convert={"unet": backbone.backbone_towers()["unet"]})
  return torch_model, out


def _loaded(directory, **settings) -> UNet3DConditionModel:
  """The UNet of a converted directory, built with the experiment-config settings."""
  unet = dict(dtype="float32", param_dtype="float32", remat=False,
              skip_temporal_if_single_frame=False, temporal_dropout=0.1)
  return pretrained.load_backbone(directory, {"unet": dict(unet, **settings)})["unet"]


def _assert_parity(out, taps, ref_out, ref_taps):
  if ref_out is not None:
    parity.assert_close(out, ref_out)
  assert set(taps) == set(TAP_NAMES)
  for name in TAP_NAMES:
    parity.assert_close(taps[name], ref_taps[name])


def _inputs(batch: int, frames: int, h: int, w: int, seed: int):
  rng = np.random.default_rng(seed)
  sample = rng.standard_normal((batch, frames, h, w, 4), np.float32)
  context = rng.standard_normal((batch, frames, CONTEXT_LEN, 12), np.float32)
  return sample, context


# Input shapes (batch, frames, latent h, latent w) each model is compiled for; 20x28 is not
# a multiple of 8, so the up path resizes to the skip sizes.
SHAPE_FOUR_LEVELS = (2, 3, 20, 28)
SHAPE_THREE_LEVELS = (2, 1, 16, 16)
SHAPE_ONE_LEVEL = (1, 3, 8, 8)


@pytest.fixture(scope="module")
def four_levels():
  """(torch model, converted NNX model, compiled forward for SHAPE_FOUR_LEVELS)."""
  torch_model = _torch_unet(CFG_FOUR_LEVELS, seed=0)
  model = unet3d_from_diffusers(torch_model)
  return torch_model, model, _jitted(model, *_inputs(*SHAPE_FOUR_LEVELS, seed=0))


@pytest.fixture(scope="module")
def three_levels(three_levels_converted):
  """(torch model, the model loaded from its converted directory, compiled forward)."""
  torch_model, directory = three_levels_converted
  model = _loaded(directory)
  return torch_model, model, _jitted(model, *_inputs(*SHAPE_THREE_LEVELS, seed=0))


def test_parity_shared_context_frames3_latent20x28(four_levels):
  """A (B, L, D) context, which the port projects once per clip, against diffusers, which
  repeats it over frames first."""
  torch_model, model, _ = four_levels
  sample, context = _inputs(*SHAPE_FOUR_LEVELS, seed=0)
  shared = np.repeat(context[:, :1], 3, axis=1)
  ref_out, ref_taps = _torch_forward(torch_model, sample, shared, per_frame=False)
  forward = _jitted(model, sample, shared[:, 0])
  out, taps = forward(jnp.asarray(sample), jnp.asarray(shared[:, 0]))
  _assert_parity(out, taps, ref_out, ref_taps)


def test_parity_per_frame_context(four_levels):
  torch_model, _, forward = four_levels
  sample, context = _inputs(*SHAPE_FOUR_LEVELS, seed=1)
  ref_out, ref_taps = _torch_forward(torch_model, sample, context)
  out, taps = forward(jnp.asarray(sample), jnp.asarray(context))
  _assert_parity(out, taps, ref_out, ref_taps)


def test_per_frame_context_keeps_a_shared_context_and_folds_frames():
  context = np.random.default_rng(2).standard_normal((2, CONTEXT_LEN, 12), np.float32)
  got = per_frame_context(jnp.asarray(context), 2, 3)
  np.testing.assert_array_equal(np.asarray(got), context)
  per_frame = np.random.default_rng(3).standard_normal((2, 3, CONTEXT_LEN, 12), np.float32)
  got = per_frame_context(jnp.asarray(per_frame), 2, 3)
  np.testing.assert_array_equal(np.asarray(got), per_frame.reshape(6, CONTEXT_LEN, 12))
  with pytest.raises(ValueError, match="context"):
    per_frame_context(jnp.asarray(per_frame), 2, 4)


def test_parity_single_frame_runs_temporal_layers_like_diffusers(three_levels):
  torch_model, _, forward = three_levels
  sample, context = _inputs(*SHAPE_THREE_LEVELS, seed=3)
  ref_out, ref_taps = _torch_forward(torch_model, sample, context)
  out, taps = forward(jnp.asarray(sample), jnp.asarray(context))
  _assert_parity(out, taps, ref_out, ref_taps)


def test_skip_temporal_single_frame_matches_torch_with_identity_temporal_layers(
    three_levels_converted):
  """Loaded with the config's skip_temporal_if_single_frame=True (VD-IT); with False, the
  single-frame parity test above matches diffusers."""
  torch_model, directory = three_levels_converted
  model = _loaded(directory, skip_temporal_if_single_frame=True)
  sample, context = _inputs(*SHAPE_THREE_LEVELS, seed=4)
  _, ref_taps = _torch_forward(torch_model, sample, context, skip_temporal=True)
  forward = _jitted(model, sample, context, output=False)
  _, taps = forward(jnp.asarray(sample), jnp.asarray(context))
  _assert_parity(None, taps, None, ref_taps)


def test_bf16_compute_with_fp32_parameters_close_to_fp32(three_levels, three_levels_converted):
  """Loaded with dtype=bfloat16, param_dtype=float32: fp32 parameters, bf16 activations, and
  max error <= BF16_TOLERANCE * max|fp32| on the output and every tap (GroupNorm statistics
  and the attention softmax stay fp32)."""
  _, _, forward = three_levels
  model16 = _loaded(three_levels_converted[1], dtype="bfloat16")
  assert all(v.dtype == jnp.float32 for _, v in nnx.to_flat_state(nnx.state(model16, nnx.Param)))
  sample, context = _inputs(*SHAPE_THREE_LEVELS, seed=3)
  ref_out, ref_taps = forward(jnp.asarray(sample), jnp.asarray(context))
  out, taps = _jitted(model16, sample, context)(jnp.asarray(sample), jnp.asarray(context))
  assert out.dtype == jnp.bfloat16 and all(t.dtype == jnp.bfloat16 for t in taps.values())
  errors = {}
  for name, got, ref in [("output", out, ref_out)] + [(k, taps[k], ref_taps[k]) for k in TAP_NAMES]:
    ref = np.asarray(ref)
    errors[name] = np.abs(np.asarray(got, np.float32) - ref).max() / np.abs(ref).max()
  assert max(errors.values()) <= BF16_TOLERANCE, f"relative bf16 errors {errors}"


def test_temporal_dropout_active_only_in_training():
  """Train mode: a fresh draw per call, reproducible from the same RNG state, unlike eval
  mode; eval mode (dropout off) equals torch's eval output."""
  torch_model = _torch_unet(CFG_ONE_LEVEL, seed=2)
  model = unet3d_from_diffusers(torch_model)
  sample, context = _inputs(*SHAPE_ONE_LEVEL, seed=5)
  eval_out, _ = _torch_forward(torch_model, sample, context, taps=False)
  model.train()
  graphdef, state = nnx.split(model)

  def forward_and_state(st, x, ctx):
    m = nnx.merge(graphdef, st)
    out = m(x, TIMESTEP, ctx)
    return out, nnx.state(m)

  args = (jnp.asarray(sample), jnp.asarray(context))
  train_forward = parity.compiled(forward_and_state, state, *args)
  out1, state1 = train_forward(state, *args)
  out2, _ = train_forward(state1, *args)
  out1_again, _ = train_forward(state, *args)
  np.testing.assert_array_equal(np.asarray(out1), np.asarray(out1_again))
  assert np.abs(np.asarray(out1) - np.asarray(out2)).max() > 1e-3
  assert np.abs(np.asarray(out1) - eval_out).max() > 1e-3
  model.eval()
  eval_graphdef, state = nnx.split(model)
  eval_forward = parity.compiled(lambda st, x, ctx: nnx.merge(eval_graphdef, st)(
      x, TIMESTEP, ctx), state, *args)
  parity.assert_close(eval_forward(state, *args), eval_out, "eval-mode output")


def test_config_round_trip_and_diffusers_validation():
  config = UNet3DConfig.from_diffusers(MODELSCOPE_CONFIG)
  assert config == UNet3DConfig()
  assert UNet3DConfig.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="act_fn"):
    UNet3DConfig.from_diffusers({**MODELSCOPE_CONFIG, "act_fn": "gelu"})
  with pytest.raises(ValueError, match="unknown"):
    UNet3DConfig.from_dict({"block_out_chanels": [1]})


def test_modelscope_size_and_rules_cover_diffusers_state_dict():
  """The real config, abstractly: 1,480 tensors / 1,411,233,860 parameters, and the
  converter maps diffusers' (meta-device) state dict onto it exactly."""
  config = UNet3DConfig.from_diffusers(MODELSCOPE_CONFIG)
  abstract = nnx.eval_shape(lambda: UNet3DConditionModel(config, rngs=abstract_build.host_rngs(0)))
  targets = abstract_build.param_shapes(abstract)
  assert len(targets) == 1480
  assert sum(int(np.prod(s.shape)) for s in targets.values()) == 1_411_233_860
  kwargs = {k: v for k, v in MODELSCOPE_CONFIG.items() if not k.startswith("_")}
  with torch.device("meta"):
    torch_model = TorchUNet3D(**kwargs)
  # Zero-stride stand-ins: full shapes, one float of memory each.
  items = ((k, np.broadcast_to(np.float32(0), tuple(v.shape)))
           for k, v in torch_model.state_dict().items())
  converted = core.convert_tensors(items, targets, UNET3D_RULES, what="ModelScope UNet3D")
  assert set(converted) == set(targets)


def _assert_same_params(a: nnx.Module, b: nnx.Module):
  flat_a = dict(nnx.to_flat_state(nnx.state(a, nnx.Param)))
  flat_b = dict(nnx.to_flat_state(nnx.state(b, nnx.Param)))
  assert flat_a.keys() == flat_b.keys()
  for path, var in flat_a.items():
    np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(flat_b[path][...]),
                                  err_msg=str(path))


def test_converts_a_save_pretrained_directory(four_levels, tmp_path):
  torch_model, model, _ = four_levels
  torch_model.save_pretrained(tmp_path)
  _assert_same_params(unet3d_from_diffusers(str(tmp_path)), model)


def test_remat_gradients_match_torch():
  """Gradients of sum(output) w.r.t. sample and per-frame context, through nnx.remat blocks,
  against torch autograd (VD-IT trains the modules that feed the frozen UNet)."""
  torch_model = _torch_unet(CFG_ONE_LEVEL, seed=3)
  model = unet3d_from_diffusers(torch_model, remat=True)
  sample, context = _inputs(*SHAPE_ONE_LEVEL, seed=7)
  graphdef, state = nnx.split(model)
  loss = lambda m, x, ctx: m(x, TIMESTEP, ctx).sum()
  grads = lambda st, x, ctx: nnx.grad(loss, argnums=(1, 2))(nnx.merge(graphdef, st), x, ctx)
  jaxpr = str(jax.make_jaxpr(grads)(state, sample, context))
  assert "checkpoint" in jaxpr or "remat" in jaxpr
  grad_fn = parity.compiled(grads, state, sample, context)
  grad_sample, grad_context = grad_fn(state, jnp.asarray(sample), jnp.asarray(context))

  torch_sample = _to_torch(sample).requires_grad_(True)
  torch_context = torch.from_numpy(context.reshape((-1,) + context.shape[2:])).requires_grad_(True)

  def per_frame_context(_, args, kwargs):
    if "encoder_hidden_states" in kwargs:
      kwargs["encoder_hidden_states"] = torch_context
    return args, kwargs

  blocks = list(torch_model.down_blocks) + [torch_model.mid_block] + list(torch_model.up_blocks)
  handles = [b.register_forward_pre_hook(per_frame_context, with_kwargs=True) for b in blocks]
  torch_model(torch_sample, TIMESTEP, torch.zeros(context.shape[0], CONTEXT_LEN, 12)).sample.sum(
      ).backward()
  for h in handles:
    h.remove()
  parity.assert_close(grad_sample, torch_sample.grad.numpy().transpose(0, 2, 3, 4, 1))
  parity.assert_close(grad_context,
                torch_context.grad.numpy().reshape(context.shape))


def _randomized_into(torch_layer: torch.nn.Module, layer: nnx.Module):
  """Randomizes a diffusers layer and loads its weights into ours with the UNet's rules."""
  parity.randomized(torch_layer, 0.3)
  items = ((k, v.numpy()) for k, v in torch_layer.state_dict().items())
  core.load_params(layer, core.convert_tensors(items, abstract_build.param_shapes(layer),
                                               UNET3D_RULES))


@pytest.mark.parametrize("kind", ["spatial", "temporal", "temporal_conv"])
def test_layer_norm_epsilons_on_low_variance_inputs(kind):
  """Layer by layer against diffusers on inputs of std 1e-3 (variance 1e-6, the size of the
  GroupNorm epsilons, which the UNet-level tests cannot resolve): 1e-6 in the transformers,
  1e-5 in the temporal convs."""
  channels, frames, rngs = 16, 3, abstract_build.host_rngs(0)
  if kind == "spatial":
    torch_layer = Torch2D(2, 8, in_channels=channels, cross_attention_dim=12, norm_num_groups=4,
                          use_linear_projection=True)
    layer = transformer_blocks.Transformer2DModel(channels, heads=2, head_dim=8, groups=4,
                                                  cross_attention_dim=12, rngs=rngs)
  elif kind == "temporal":
    torch_layer = TorchTemporal(2, 8, in_channels=channels, norm_num_groups=4)
    layer = transformer_blocks.TransformerTemporalModel(channels, heads=2, head_dim=8, groups=4,
                                                        rngs=rngs)
  else:
    torch_layer = TorchTemporalConv(channels, channels, dropout=0.1, norm_num_groups=4)
    layer = unet3d_layers.TemporalConvLayer(channels, groups=4, dropout=0.1, rngs=rngs)
  _randomized_into(torch_layer, layer)
  rng = np.random.default_rng(8)
  x = (1e-3 * rng.standard_normal((frames, 4, 5, channels))).astype(np.float32)
  context = rng.standard_normal((frames, CONTEXT_LEN, 12)).astype(np.float32)
  torch_x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    if kind == "spatial":
      ref = torch_layer(torch_x, encoder_hidden_states=torch.from_numpy(context),
                        return_dict=False)[0]
    elif kind == "temporal":
      ref = torch_layer(torch_x, num_frames=frames, return_dict=False)[0]
    else:
      ref = torch_layer(torch_x, num_frames=frames)
  graphdef, state = nnx.split(layer)
  if kind == "spatial":
    got = jax.jit(lambda st, x, c: nnx.merge(graphdef, st)(x, c))(state, x, context)
  else:
    got = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x, frames))(state, x)
  parity.assert_close(got, ref.numpy().transpose(0, 2, 3, 1))


def test_spatial_transformer_at_library_kernel_sizes_matches_torch():
  """A first-level spatial transformer at the bench's size (5 frames of 32x40, 64 channels,
  one head, a shared 77-token context), compiled with the production options. Tiny shapes
  never reach XLA's YNNPACK fusions; at this size one of them once turned the cross-attention
  into NaNs (a key repeat over frames fused into the attention's matmuls)."""
  channels, frames, context_dim = 64, 5, 1024
  torch_layer = Torch2D(1, 64, in_channels=channels, cross_attention_dim=context_dim,
                        norm_num_groups=32, use_linear_projection=True)
  layer = transformer_blocks.Transformer2DModel(channels, heads=1, head_dim=64, groups=32,
                                                cross_attention_dim=context_dim,
                                                rngs=abstract_build.host_rngs(0))
  _randomized_into(torch_layer, layer)
  rng = np.random.default_rng(10)
  x = rng.standard_normal((frames, 32, 40, channels)).astype(np.float32)
  context = rng.standard_normal((1, CONTEXT_LEN, context_dim)).astype(np.float32)
  with torch.no_grad():
    ref = torch_layer(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                      encoder_hidden_states=torch.from_numpy(context).repeat(frames, 1, 1),
                      return_dict=False)[0]
  graphdef, state = nnx.split(layer)
  forward = parity.compiled(lambda st, x, c: nnx.merge(graphdef, st)(x, c), state, x, context)
  parity.assert_close(forward(state, x, context), ref.numpy().transpose(0, 2, 3, 1))


def test_attention_rejects_a_context_batch_that_does_not_divide_the_queries():
  attn = transformer_blocks.Attention(8, heads=2, head_dim=4, kv_dim=6, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="context batch 4 does not divide query batch 6"):
    attn(jnp.zeros((6, 5, 8)), jnp.zeros((4, 3, 6)))


def test_temporal_transformer_in_pixel_chunks_matches_torch(monkeypatch):
  """The CPU path in pixel chunks (20 pixels in 3 chunks of 7, one zero-padded) with both
  folds (proj_in into attn1's q, k, v: 16 channels to width 32; ff's output layer into
  proj_out: width 32 to 16 channels), against diffusers."""
  channels, frames = 16, 3
  monkeypatch.setattr(transformer_blocks, "_CPU_TOKEN_CHUNK", frames * 32 * 7)
  torch_layer = TorchTemporal(4, 8, in_channels=channels, norm_num_groups=4)
  layer = transformer_blocks.TransformerTemporalModel(channels, heads=4, head_dim=8, groups=4,
                                                      rngs=abstract_build.host_rngs(0))
  _randomized_into(torch_layer, layer)
  x = np.random.default_rng(9).standard_normal((frames, 4, 5, channels)).astype(np.float32)
  with torch.no_grad():
    ref = torch_layer(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), num_frames=frames,
                      return_dict=False)[0]
  got = layer(jnp.asarray(x), frames)
  parity.assert_close(got, ref.numpy().transpose(0, 2, 3, 1))
