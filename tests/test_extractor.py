"""The diffusion feature extractor against PyTorch.

The references are torch modules laid out like VD-IT's adapters (tests/extractor_reference.py,
from `Text-To-Video-Finetuning/train_itcross_pn.py`: the same attribute names, so their state
dict loads into ours with no renames) whose computations come from torch itself: `F.multi_head_attention_forward` for the
cross attention, nn.Conv2d / nn.Linear / nn.LayerNorm, diffusers' DDPMScheduler.add_noise and
F.interpolate for the masks. The whole pyramid, at the tiny config's tower architectures, is
compared with a torch pipeline of diffusers / transformers towers (converted into ours by
vdit_jax.convert) and those adapters, with the VAE posterior mean as latents and our CLIP
pixels fed to the torch vision tower (PIL's resize is not reproducible bit for bit).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers import UNet3DConditionModel as TorchUNet3D
from flax import nnx

from configs import ytvos
from vdit_jax import abstract_build, errors
from vdit_jax import towers as towers_lib
from vdit_jax.convert import core
from vdit_jax.convert.diffusers import unet3d_from_diffusers, vae_encoder_from_diffusers
from vdit_jax.convert.transformers import (clip_text_from_transformers,
                                           clip_vision_from_transformers)
from vdit_jax.models import clip, clip_preprocess, extractor, normalize

import parity
from extractor_reference import TorchAdapters

CONFIG = ytvos.get_config("tiny")
ARCHITECTURES = CONFIG.model.random_towers.to_dict()
SETTINGS = CONFIG.model.extractor.to_dict()
OUT_CHANNELS = tuple(CONFIG.model.head.in_channels)
MEAN, STD = tuple(CONFIG.data.mean), tuple(CONFIG.data.std)
# 176x296 frames: 22x37 latents, 3x5 at the UNet's deepest level; not multiples of 32, so the
# strided convs round up and the masks' nearest resizes have non-integer ratios.
NUM_FRAMES, HEIGHT, WIDTH = 2, 176, 296
VALID_SIZES = ((150, 260), (176, 230))  # (h, w) of each test video before padding
CAPTIONS = 3
VIDEO_OF_CAPTION = (1, 0, 1)
GRAD_TOLERANCE = 1e-3


def _scheduler() -> DDPMScheduler:
  return DDPMScheduler(num_train_timesteps=SETTINGS["num_train_timesteps"],
                       beta_start=SETTINGS["beta_start"], beta_end=SETTINGS["beta_end"],
                       beta_schedule="scaled_linear")


def _torch_noisy_latents(adapters: TorchAdapters, latents: torch.Tensor, statistics: str):
  """add_noise(latents (B, C, F, h, w), standardised noise) at the config's timestep; "video"
  is the original's arithmetic run on each video alone."""
  if statistics == "batch":
    noise = adapters.noise(latents)
  else:
    noise = torch.cat([adapters.noise(latents[i:i + 1]) for i in range(len(latents))])
  steps = torch.full((len(latents),), SETTINGS["timestep"], dtype=torch.long)
  return _scheduler().add_noise(latents, noise, steps)


def _nhwc(x: torch.Tensor) -> np.ndarray:
  return x.detach().numpy().transpose(0, 2, 3, 1)


def _extractor(architectures, out_channels=OUT_CHANNELS, **overrides):
  settings = dict(SETTINGS, **overrides)
  return extractor.FeatureExtractor(architectures, out_channels=out_channels, mean=MEAN,
                                    std=STD, rngs=abstract_build.host_rngs(0), **settings)


def _load_torch_adapters(ours: extractor.FeatureExtractor, adapters: TorchAdapters) -> None:
  """The torch state dict into ours with no renames (the names are the original's)."""
  items = ((k, v.detach().numpy()) for k, v in adapters.state_dict().items())
  core.load_params(ours, core.convert_tensors(items, abstract_build.param_shapes(ours),
                                              core.Rules(), what="adapters"))


# ---- the tiny towers and adapters, in torch and ours ----

@pytest.fixture(scope="module")
def torch_towers():
  """Random diffusers / transformers towers with the tiny config's architectures."""
  torch.manual_seed(0)
  a = ARCHITECTURES
  encoder_blocks = len(a["vae_encoder"]["block_out_channels"])
  return {
      "unet": parity.randomized(TorchUNet3D(**a["unet"]), 0.05, seed=1,
                                norm_scales_near_one=True),
      "vae_encoder": parity.randomized(
          AutoencoderKL(**a["vae_encoder"], down_block_types=("DownEncoderBlock2D",) *
                        encoder_blocks, up_block_types=("UpDecoderBlock2D",) * encoder_blocks),
          0.1, seed=2, norm_scales_near_one=True),
      "clip_text": parity.randomized(
          transformers.CLIPTextModel(transformers.CLIPTextConfig(**a["clip_text"])), 0.3, seed=3,
          norm_scales_near_one=True),
      "clip_vision": parity.randomized(
          transformers.CLIPVisionModelWithProjection(
              transformers.CLIPVisionConfig(**a["clip_vision"])), 0.3, seed=4,
          norm_scales_near_one=True),
  }


@pytest.fixture(scope="module")
def towers(torch_towers):
  """The torch towers converted into ours."""
  return {"unet": unet3d_from_diffusers(torch_towers["unet"]),
          "vae_encoder": vae_encoder_from_diffusers(torch_towers["vae_encoder"]),
          "clip_text": clip_text_from_transformers(torch_towers["clip_text"]),
          "clip_vision": clip_vision_from_transformers(torch_towers["clip_vision"])}


def _torch_adapters(architectures, out_channels=OUT_CHANNELS, seed: int = 5) -> TorchAdapters:
  adapters = TorchAdapters(
      architectures["clip_vision"].hidden_size, architectures["clip_text"].hidden_size,
      architectures["vae_encoder"].latent_channels, extractor.level_channels(architectures),
      out_channels, fusion_heads=SETTINGS["fusion_heads"],
      fusion_ffn_dim=SETTINGS["fusion_ffn_dim"], fusion_ln_eps=SETTINGS["fusion_ln_eps"])
  return parity.randomized(adapters, 0.1, seed=seed, norm_scales_near_one=True)


@pytest.fixture(scope="module")
def adapters(towers):
  """(torch adapters, ours with their weights)."""
  architectures = {name: tower.config for name, tower in towers.items()}
  torch_adapters = _torch_adapters(architectures)
  ours = _extractor(architectures)
  _load_torch_adapters(ours, torch_adapters)
  return torch_adapters, ours


@pytest.fixture(scope="module")
def inputs():
  """uint8 frames (2, T, H, W, 3) zero-padded bottom / right, their pad_mask (2, H, W), and
  CAPTIONS caption ids (bos, words, eot, then pad ids) of length 77."""
  rng = np.random.default_rng(0)
  frames = np.zeros((len(VALID_SIZES), NUM_FRAMES, HEIGHT, WIDTH, 3), np.uint8)
  pad_mask = np.ones((len(VALID_SIZES), HEIGHT, WIDTH), bool)
  for i, (h, w) in enumerate(VALID_SIZES):
    frames[i, :, :h, :w] = rng.integers(0, 256, (NUM_FRAMES, h, w, 3))
    pad_mask[i, :h, :w] = False
  vocab = ARCHITECTURES["clip_text"]["vocab_size"]
  ids = np.full((CAPTIONS, 77), vocab - 1, np.int32)
  ids[:, 0] = vocab - 2
  for i, length in enumerate((9, 5, 14)):
    ids[i, 1:length] = rng.integers(300, vocab - 2, length - 1)
  return frames, pad_mask, ids


def _split(ours: extractor.FeatureExtractor, towers):
  ex_def, ex_state = nnx.split(ours)
  towers_def, towers_state = nnx.split(towers)
  merge = lambda ex, tw: (nnx.merge(ex_def, ex), nnx.merge(towers_def, tw))
  return merge, ex_state, towers_state


def _pyramid_shapes(batch: int) -> list[tuple[int, ...]]:
  """The tiny pyramid of `batch` test clips: strides 4-32, sizes rounded up."""
  return [(batch * NUM_FRAMES, -(-HEIGHT // s), -(-WIDTH // s), c)
          for s, c in zip((4, 8, 16, 32), OUT_CHANNELS)]


# The gradient test's loss: sum over levels of <LOSS_WEIGHTS[l], level l> for one clip.
LOSS_WEIGHTS = [np.random.default_rng(4).standard_normal(s).astype(np.float32)
                for s in _pyramid_shapes(1)]


@pytest.fixture(scope="module")
def full_run(adapters, towers, inputs):
  """(frames (1, ...), pad_mask (1, ...), ids (1, 77)) -> (our Pyramid with the posterior
  mean, the gradient of the LOSS_WEIGHTS loss w.r.t. the adapters), compiled once for the
  pyramid, shared-path and gradient tests."""
  merge, ex_state, towers_state = _split(adapters[1], towers)

  def run(ex, tw, frames, pad_mask, ids, weights):
    model, tws = merge(ex, tw)

    def loss(m):
      pyramid = m(tws, frames, pad_mask, ids, deterministic_latents=True)
      return sum((f * w).sum() for f, w in zip(pyramid.features, weights)), pyramid

    (_, pyramid), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return pyramid, grads

  frames, pad_mask, ids = inputs
  args = (ex_state, towers_state, frames[:1], pad_mask[:1], ids[:1], LOSS_WEIGHTS)
  compiled = parity.compiled(run, *args)
  return lambda *inputs: compiled(ex_state, towers_state, *inputs, LOSS_WEIGHTS)


# ---- the torch pipeline ----

def _torch_unet_taps(unet: TorchUNet3D, noisy: torch.Tensor, context: torch.Tensor):
  """diffusers' UNet at t=0 with a per-frame context (B*F, L, D) (pre-hooks replace the clip
  context diffusers repeats over frames) -> the six taps (B*F, C, h, w)."""
  taps, handles = {}, []

  def use_frame_context(_, args, kwargs):
    if "encoder_hidden_states" in kwargs:
      kwargs["encoder_hidden_states"] = context
    return args, kwargs

  def tap(name, first=False):
    def hook(_, __, out):  # Returns None: the output stays as it is.
      taps[name] = out[0] if first else out
    return hook

  for block in list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks):
    handles.append(block.register_forward_pre_hook(use_frame_context, with_kwargs=True))
  handles.append(unet.transformer_in.register_forward_hook(tap("transformer_in", True)))
  handles += [unet.down_blocks[i].register_forward_hook(tap(f"down{i}", True)) for i in (0, 1)]
  handles += [unet.up_blocks[i].register_forward_hook(tap(f"up{i}")) for i in (0, 1, 2)]
  frames = noisy.shape[2]
  unet(noisy, SETTINGS["timestep"], context[::frames])
  for handle in handles:
    handle.remove()
  return taps


def _torch_pyramid(torch_towers, adapters: TorchAdapters, frames, pad_mask, ids,
                   clip_values):
  """The original's forward in torch (`itcross_video_swin_transformer.py:716-734`,
  `train_itcross_pn.py:293-375`) with the posterior mean as latents and `clip_values`
  (B*T, S, S, 3), our CLIP preprocessing, as the vision tower's input.

  Returns the levels (B*T, C, h, w) and the masks (B*T, h, w).
  """
  b, t = frames.shape[:2]
  mean = torch.tensor(MEAN).reshape(1, 1, 3, 1, 1)
  std = torch.tensor(STD).reshape(1, 1, 3, 1, 1)
  x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float().div(255)
  pad = torch.from_numpy(pad_mask)
  normalized = x.sub(mean).div(std).masked_fill(pad[:, None, None], 0.0)
  images = ((normalized * std + mean) * 2 - 1).flatten(0, 1)

  vae_model = torch_towers["vae_encoder"]
  tapped = []
  handle = vae_model.encoder.down_blocks[2].resnets[1].register_forward_hook(
      lambda _, __, out: tapped.append(out))
  posterior = vae_model.encode(images).latent_dist
  handle.remove()
  latents = posterior.mean * vae_model.config.scaling_factor
  latents = latents.reshape(b, t, *latents.shape[1:]).transpose(1, 2)

  image_hidden = torch_towers["clip_vision"](
      pixel_values=torch.from_numpy(np.array(clip_values).transpose(0, 3, 1, 2))
  ).last_hidden_state
  text = torch_towers["clip_text"](torch.from_numpy(ids).long()).last_hidden_state
  context = adapters.context(text.repeat_interleave(t, dim=0), image_hidden)
  noisy = _torch_noisy_latents(adapters, latents, "batch")
  taps = _torch_unet_taps(torch_towers["unet"], noisy, context)
  pairs = tapped + [torch.cat([taps[e], taps[d]], dim=1)
                             for e, d in extractor.UNET_LEVELS]
  levels = [adapters.act_postprocess[i](x) for i, x in enumerate(pairs)]
  frame_masks = pad.repeat_interleave(t, dim=0)[None].float()
  masks = [F.interpolate(frame_masks, size=x.shape[-2:]).bool()[0] for x in levels]
  return levels, masks


@pytest.fixture(scope="module")
def clip_values(inputs):
  """Our CLIP pixels of every test frame: (2 * T, S, S, 3)."""
  frames, pad_mask, _ = inputs
  size = ARCHITECTURES["clip_vision"]["image_size"]
  images = normalize.backbone_frames(frames, pad_mask, MEAN, STD)
  config = clip_preprocess.CLIPPreprocessConfig(shortest_edge=size, crop_size=size)
  return np.asarray(clip_preprocess.clip_pixels(images.reshape((-1,) + images.shape[2:]), config))


# ---- tests ----

def test_full_size_has_the_originals_13578548_trainable_parameters():
  base = ytvos.get_config()
  architectures = towers_lib.released_architectures()
  assert extractor.level_channels(architectures) == (512, 960, 1600, 1920)
  abstract = nnx.eval_shape(lambda: extractor.FeatureExtractor(
      architectures, out_channels=base.model.head.in_channels, mean=MEAN, std=STD,
      rngs=abstract_build.host_rngs(0), **base.model.extractor))
  counts = {name: clip.count_params(getattr(abstract, name)) for name in (
      "cross_attn", "projection", "noise_pred", "noise_fc", "act_postprocess")}
  assert counts == {"cross_attn": 5_248_512, "projection": 2_361_344, "noise_pred": 148,
                    "noise_fc": 32, "act_postprocess": 5_968_512}
  assert clip.count_params(abstract) == 13_578_548


def test_state_dict_names_are_the_originals(adapters):
  """The torch layout loaded with no renames (the fixture); spot-check the transposes."""
  torch_adapters, ours = adapters
  state = torch_adapters.state_dict()
  np.testing.assert_array_equal(ours.noise_fc[2].kernel[...],
                                state["noise_fc.2.weight"].numpy().T)
  np.testing.assert_array_equal(ours.cross_attn.cros_attn.w_qs.kernel[...],
                                state["cross_attn.cros_attn.w_qs.weight"].numpy().T)
  np.testing.assert_array_equal(ours.act_postprocess[3][1].kernel[...][0, 0],
                                state["act_postprocess.3.1.weight"].numpy()[:, :, 0, 0].T)


def test_projection_and_cross_attention_match_torch(adapters):
  torch_adapters, ours = adapters
  rng = np.random.default_rng(1)
  width = ARCHITECTURES["clip_text"]["hidden_size"]
  vision_width = ARCHITECTURES["clip_vision"]["hidden_size"]
  text = rng.standard_normal((4, 77, width)).astype(np.float32)
  image = rng.standard_normal((4, 5, vision_width)).astype(np.float32)
  got = jax.jit(lambda t, i: ours.cross_attn(t, ours.projection(i)))(text, image)
  with torch.no_grad():
    ref = torch_adapters.context(torch.from_numpy(text), torch.from_numpy(image))
  parity.assert_close(got, ref.numpy(), "context")


@pytest.mark.parametrize("statistics", ["video", "batch"])
def test_learned_noise_and_add_noise_match_torch(towers, statistics):
  """Two videos of different scale: per-video statistics standardise each alone, batch
  statistics the two together (the original's arithmetic); add_noise is diffusers'."""
  architectures = {name: tower.config for name, tower in towers.items()}
  torch_adapters = _torch_adapters(architectures, seed=6)
  ours = _extractor(architectures, noise_statistics=statistics)
  _load_torch_adapters(ours, torch_adapters)
  rng = np.random.default_rng(2)
  latents = rng.standard_normal((2, 3, 6, 7, 4)).astype(np.float32)
  latents[1] *= 3.0
  got = np.asarray(jax.jit(ours.noisy_latents)(latents))
  with torch.no_grad():
    ref = _torch_noisy_latents(torch_adapters, torch.from_numpy(latents.transpose(0, 4, 1, 2, 3)),
                               statistics)
  parity.assert_close(got, ref.numpy().transpose(0, 2, 3, 4, 1), f"{statistics} noisy latents")
  assert (ours.signal_scale, ours.noise_scale) == pytest.approx((0.999575, 0.029155), abs=1e-6)


def test_act_postprocess_matches_torch(adapters, towers):
  torch_adapters, ours = adapters
  rng = np.random.default_rng(3)
  architectures = {name: tower.config for name, tower in towers.items()}
  for level, channels in enumerate(extractor.level_channels(architectures)):
    x = rng.standard_normal((2, 3, 5, channels)).astype(np.float32)
    with torch.no_grad():
      ref = torch_adapters.act_postprocess[level](torch.from_numpy(x.transpose(0, 3, 1, 2)))
    parity.assert_close(ours.postprocess(level, jnp.asarray(x)), _nhwc(ref), f"level {level}")


def test_pyramid_matches_the_torch_pipeline(torch_towers, adapters, inputs, clip_values,
                                            full_run):
  frames, pad_mask, ids = inputs
  pyramid, _ = full_run(frames[:1], pad_mask[:1], ids[:1])
  with torch.no_grad():
    levels, masks = _torch_pyramid(torch_towers, adapters[0], frames[:1], pad_mask[:1], ids[:1],
                                   clip_values[:NUM_FRAMES])
  assert [f.shape for f in pyramid.features] == _pyramid_shapes(1)
  for level, (got, ref) in enumerate(zip(pyramid.features, levels)):
    parity.assert_close(got, _nhwc(ref), f"level {level}")
  for got, ref in zip(pyramid.masks, masks):
    np.testing.assert_array_equal(np.asarray(got), ref.numpy())
  assert all(np.asarray(m).any() and not np.asarray(m).all() for m in pyramid.masks)


def test_shared_video_encoding_equals_separate_full_runs(adapters, towers, inputs, full_run):
  """Two videos encoded once, three captions (two on video 1) in one pyramid call: the
  numbers of three full runs, one per caption, to 1e-5."""
  frames, pad_mask, ids = inputs
  merge, ex_state, towers_state = _split(adapters[1], towers)

  def shared(ex, tw, frames, pad_mask, ids, index):
    model, tws = merge(ex, tw)
    video = model.encode_video(tws, frames, pad_mask, deterministic_latents=True)
    return model.pyramid(tws, video, ids, index)

  index = np.asarray(VIDEO_OF_CAPTION, np.int32)
  args = (ex_state, towers_state, frames, pad_mask, ids, index)
  together = parity.compiled(shared, *args)(*args)
  for n, v in enumerate(VIDEO_OF_CAPTION):
    alone, _ = full_run(frames[v:v + 1], pad_mask[v:v + 1], ids[n:n + 1])
    rows = slice(n * NUM_FRAMES, (n + 1) * NUM_FRAMES)
    for level, (got, ref) in enumerate(zip(together.features, alone.features)):
      got, ref = np.asarray(got[rows]), np.asarray(ref)
      err = np.abs(got - ref).max()
      assert err <= 1e-5 * max(1.0, np.abs(ref).max()), f"caption {n} level {level}: {err:.3g}"
    for got, ref in zip(together.masks, alone.masks):
      np.testing.assert_array_equal(np.asarray(got[rows]), np.asarray(ref))


def test_gradients_reach_the_adapters_through_the_unet_like_torch(torch_towers, adapters,
                                                                   inputs, clip_values, full_run):
  """The LOSS_WEIGHTS loss's gradient against torch autograd through the same pipeline, and
  nonzero for noise_pred, noise_fc, projection and cross_attn, which reach the pyramid only
  through the frozen UNet.

  Tolerance GRAD_TOLERANCE x max|grad| per parameter: summed over every pixel, through the
  noise's standardisation, these gradients carry fp32 rounding of their own; torch's fp32
  gradients differ from its float64 ones by up to 3.2e-4 x max|grad| here (noise_pred.bias).
  """
  torch_adapters, ours = adapters
  frames, pad_mask, ids = (x[:1] for x in inputs)
  _, grads = full_run(frames, pad_mask, ids)
  got = dict(nnx.to_flat_state(grads))
  for tower in torch_towers.values():
    tower.requires_grad_(False)
  torch_adapters.zero_grad()
  levels, _ = _torch_pyramid(torch_towers, torch_adapters, frames, pad_mask, ids,
                             clip_values[:NUM_FRAMES])
  sum((level * torch.from_numpy(w.transpose(0, 3, 1, 2))).sum()
      for level, w in zip(levels, LOSS_WEIGHTS)).backward()
  ref = core.convert_tensors(((k, p.grad.numpy()) for k, p in torch_adapters.named_parameters()),
                             abstract_build.param_shapes(ours), core.Rules(), what="gradients")
  for path, value in ref.items():
    err = np.abs(np.asarray(got[path][...]) - value).max()
    assert err <= GRAD_TOLERANCE * np.abs(value).max(), f"{path}: max abs error {err:.3g}"
  for name in ("noise_pred", "noise_fc", "projection", "cross_attn"):
    norms = [np.abs(np.asarray(v[...])).max() for p, v in got.items() if p[0] == name]
    assert min(norms) > 0 and np.isfinite(norms).all(), name


def test_sampled_latents_follow_the_key(adapters, towers, inputs):
  """sample_latents draws the posterior sample from `rng` (one draw per key); the mean is
  used with deterministic_latents; sampling without a key is an error."""
  _, ours = adapters
  frames, pad_mask, _ = (x[:1] for x in inputs)
  merge, ex_state, towers_state = _split(ours, towers)

  def encode(ex, tw, frames, pad_mask, key):
    model, tws = merge(ex, tw)
    return (model.encode_video(tws, frames, pad_mask, rng=key).noisy_latents,
            model.encode_video(tws, frames, pad_mask, deterministic_latents=True).noisy_latents)

  args = (ex_state, towers_state, frames, pad_mask, jax.random.key(0))
  encode = parity.compiled(encode, *args)
  sampled, mean = encode(*args)
  again, _ = encode(*args[:-1], jax.random.key(0))
  other, _ = encode(*args[:-1], jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(sampled), np.asarray(again))
  assert np.abs(np.asarray(sampled) - np.asarray(other)).max() > 1e-3
  assert np.abs(np.asarray(sampled) - np.asarray(mean)).max() > 1e-3
  with pytest.raises(ValueError, match="needs `rng`"):
    ours.encode_video(towers, frames, pad_mask)


def test_bad_settings_and_inputs_are_named(towers, adapters, inputs):
  architectures = {name: tower.config for name, tower in towers.items()}
  with pytest.raises(errors.ConfigError, match="noise_statistics='clip'"):
    _extractor(architectures, noise_statistics="clip")
  with pytest.raises(errors.ConfigError, match="timestep=1000"):
    _extractor(architectures, timestep=1000)
  with pytest.raises(errors.ConfigError, match="4 levels"):
    _extractor(architectures, out_channels=(16, 32, 32))
  with pytest.raises(ValueError, match="no architecture for tower"):
    _extractor({k: v for k, v in architectures.items() if k != "unet"})
  frames, pad_mask, ids = inputs
  video = extractor.VideoEncoding(*(jnp.zeros((2, NUM_FRAMES, 1)),) * 3, pad_mask=pad_mask)
  with pytest.raises(ValueError, match="3 captions for 2 videos"):
    adapters[1].pyramid(towers, video, ids)
