"""VAE encoder parity with diffusers' PyTorch AutoencoderKL, weights moved by the converter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from flax import nnx

from vdit_jax import abstract_build
from vdit_jax.convert import core
from vdit_jax.convert.diffusers import VAE_ENCODER_RULES, vae_encoder_from_diffusers
from vdit_jax.models.vae import DiagonalGaussian, VAEEncoder, VAEEncoderConfig

import parity

# The SD VAE config.json shipped with damo-vilab/text-to-video-ms-1.7b (vae/).
SD_VAE_CONFIG = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.17.0.dev0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
TINY_CONFIG = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=2, norm_num_groups=4,
                   latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4)
# 36x44 is not a multiple of 8: the bottom/right-padded stride-2 convs round up.
IMAGES_SHAPE = (2, 36, 44, 3)


@pytest.fixture(scope="module")
def tiny():
  """(torch AutoencoderKL with random weights, images, torch posterior, torch tap, ours)."""
  torch.manual_seed(0)
  torch_model = parity.randomized(AutoencoderKL(**TINY_CONFIG), 0.1, norm_scales_near_one=True)
  images = np.random.default_rng(0).uniform(-1, 1, IMAGES_SHAPE).astype(np.float32)
  taps = {}
  tap_module = torch_model.encoder.down_blocks[2].resnets[1]
  handle = tap_module.register_forward_hook(lambda _, __, out: taps.setdefault("tap", out))
  with torch.no_grad():
    posterior = torch_model.encode(torch.from_numpy(images.transpose(0, 3, 1, 2))).latent_dist
  handle.remove()
  model = vae_encoder_from_diffusers(torch_model)
  graphdef, state = nnx.split(model)
  forward = parity.compiled(lambda st, x: nnx.merge(graphdef, st)(x), state, images)
  ours = forward(state, jnp.asarray(images))
  return posterior, taps["tap"], ours


def _nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def test_moments_mode_and_stride4_tap_match_diffusers(tiny):
  torch_posterior, torch_tap, (posterior, tap) = tiny
  parity.assert_close(posterior.moments, _nhwc(torch_posterior.parameters))
  parity.assert_close(posterior.mode(), _nhwc(torch_posterior.mode()))
  parity.assert_close(posterior.std, _nhwc(torch_posterior.std))
  assert tap.shape == (2, 9, 11, 16)
  parity.assert_close(tap, _nhwc(torch_tap))


def test_sample_is_mean_plus_std_times_normal_of_the_key(tiny):
  torch_posterior, _, (posterior, _) = tiny
  key = jax.random.key(3)
  sample = np.asarray(posterior.sample(key))
  eps = np.asarray(jax.random.normal(key, sample.shape))
  parity.assert_close(sample, _nhwc(torch_posterior.mean) + _nhwc(torch_posterior.std) * eps)
  assert np.abs(sample - np.asarray(posterior.sample(jax.random.key(4)))).max() > 1e-3


def test_per_video_keys_make_a_videos_sample_independent_of_its_batch(tiny):
  """Keys (V,) draw each video's eps alone: video 1 sampled in a batch of two equals video 1
  sampled by itself with its key, and each is torch's mean + std x that key's normal."""
  torch_posterior, _, (posterior, _) = tiny
  keys = jax.random.split(jax.random.key(5), 2)
  batch = np.asarray(posterior.sample(keys))
  alone = np.asarray(DiagonalGaussian(posterior.moments[1:]).sample(keys[1:]))
  np.testing.assert_array_equal(batch[1:], alone)
  eps = np.concatenate([np.asarray(jax.random.normal(k, (1,) + batch.shape[1:])) for k in keys])
  parity.assert_close(batch, _nhwc(torch_posterior.mean) + _nhwc(torch_posterior.std) * eps)
  with pytest.raises(ValueError, match="3 keys for 2 rows"):
    posterior.sample(jax.random.split(jax.random.key(5), 3))


def test_logvar_is_clamped_to_minus30_20():
  moments = jnp.concatenate([jnp.zeros((1, 2, 2, 4)), jnp.full((1, 2, 2, 4), 50.0)], axis=-1)
  posterior = DiagonalGaussian(moments)
  np.testing.assert_allclose(np.asarray(posterior.std), np.exp(10.0), rtol=1e-6)
  posterior = DiagonalGaussian(-moments)
  np.testing.assert_allclose(np.asarray(posterior.std), np.exp(-15.0), rtol=1e-6)


def test_config_round_trip_and_diffusers_validation():
  config = VAEEncoderConfig.from_diffusers(SD_VAE_CONFIG)
  assert config == VAEEncoderConfig()
  assert VAEEncoderConfig.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="down blocks"):
    VAEEncoderConfig.from_diffusers({**SD_VAE_CONFIG, "down_block_types": ["Other"] * 4})
  with pytest.raises(ValueError, match="tap"):
    VAEEncoderConfig(tap_block=4)


def test_sd_vae_size_and_rules_cover_diffusers_state_dict():
  """The real config, abstractly: encoder + quant_conv as in diffusers, decoder ignored."""
  config = VAEEncoderConfig.from_diffusers(SD_VAE_CONFIG)
  abstract = nnx.eval_shape(lambda: VAEEncoder(config, rngs=abstract_build.host_rngs(0)))
  targets = abstract_build.param_shapes(abstract)
  kwargs = {k: v for k, v in SD_VAE_CONFIG.items() if not k.startswith("_")}
  with torch.device("meta"):
    torch_model = AutoencoderKL(**kwargs)
  state = torch_model.state_dict()
  encoder_keys = [k for k in state if k.startswith(("encoder.", "quant_conv."))]
  assert len(targets) == len(encoder_keys)
  assert sum(int(np.prod(s.shape)) for s in targets.values()) == sum(
      state[k].numel() for k in encoder_keys) == 34_163_592 + 72
  items = ((k, np.broadcast_to(np.float32(0), tuple(v.shape))) for k, v in state.items())
  converted = core.convert_tensors(items, targets, VAE_ENCODER_RULES, what="SD VAE encoder")
  assert set(converted) == set(targets)


def test_legacy_attention_names_convert():
  """Pre-0.14 checkpoints name the mid-block attention query/key/value/proj_attn."""
  config = VAEEncoderConfig.from_diffusers(dict(TINY_CONFIG))
  targets = abstract_build.param_shapes(nnx.eval_shape(
      lambda: VAEEncoder(config, rngs=abstract_build.host_rngs(0))))
  torch.manual_seed(0)
  state = AutoencoderKL(**TINY_CONFIG).state_dict()
  legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  renamed = {}
  for key, value in state.items():
    for new, old in legacy.items():
      key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
    renamed[key] = value.numpy()
  assert any(".query." in k for k in renamed)
  converted = core.convert_tensors(renamed.items(), targets, VAE_ENCODER_RULES)
  np.testing.assert_array_equal(
      converted[("encoder", "mid_block", "attentions", 0, "to_q", "kernel")],
      state["encoder.mid_block.attentions.0.to_q.weight"].numpy().T)


def test_converts_a_save_pretrained_directory(tmp_path):
  torch.manual_seed(1)
  torch_model = AutoencoderKL(**TINY_CONFIG)
  torch_model.save_pretrained(tmp_path)
  from_dir = vae_encoder_from_diffusers(str(tmp_path))
  from_module = vae_encoder_from_diffusers(torch_model)
  flat_dir = dict(nnx.to_flat_state(nnx.state(from_dir, nnx.Param)))
  flat_module = dict(nnx.to_flat_state(nnx.state(from_module, nnx.Param)))
  assert flat_dir.keys() == flat_module.keys()
  for path, var in flat_dir.items():
    np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(flat_module[path][...]))
