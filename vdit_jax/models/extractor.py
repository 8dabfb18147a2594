"""VD-IT's diffusion feature extractor: one t=0 pass of the frozen text-to-video UNet, made a
four-level feature pyramid by trainable adapters.

The original is `FeatureExtractor` in VD-IT `Text-To-Video-Finetuning/train_itcross_pn.py:
155-375` with the wrapper around it, `BackboneBase.forward` in
`models/itcross_video_swin_transformer.py:716-734` (de-normalisation, per-level masks).

The work comes in two stages, so that the text-independent part runs once per video however
many captions (referring expressions) it has:
  `encode_video`: frames -> VAE latents plus the learned noise (`noise_pred`, `noise_fc`),
    the VAE's stride-4 tap through `act_postprocess[0]`, and the CLIP image tokens through
    `projection`. Nothing here depends on a caption.
  `pyramid`: captions -> CLIP text states -> `cross_attn` with the video's image tokens
    (the UNet's per-frame context) -> `UNet3DConditionModel.features` at t=0 -> the other
    three levels. `video_index` maps each caption to its video, so E expressions of one video
    reuse one `encode_video` (the numbers equal E separate full runs).

The frozen towers are not attributes: every method takes `towers`, a mapping from the names
of `vdit_jax.towers.tower_specs` ("vae_encoder", "clip_vision", "clip_text", "unet") to
modules. This module's state is then exactly the trainable adapters, at the paths of the
original state dict under `backbone.0.diff_ftex.` (`cross_attn.cros_attn.w_qs.kernel`,
`noise_fc.2.kernel`, `act_postprocess.3.1.bias`, ...), so the owner of both splits frozen
from trainable by attribute (its `towers` against the rest), and the same adapters run with
any set of towers (converted, random, bf16).

Gradients flow through the UNet's activations into `noise_pred`, `noise_fc`, `projection`
and `cross_attn`, as in the original; the VAE, CLIP image and CLIP text outputs are
constants (stop_gradient). Nothing is masked: padded pixels (the ImageNet mean colour after
de-normalisation) run through every tower, as in the original.
"""

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from vdit_jax import errors
from vdit_jax.models import torch_init, unet3d
from vdit_jax.models.clip_preprocess import CLIPPreprocessConfig, clip_pixels
from vdit_jax.models.fusion import CrossAttention, ResidualProjection
from vdit_jax.models.normalize import backbone_frames
from vdit_jax.models.resize import resize_nearest

TOWERS_USED = ("vae_encoder", "clip_vision", "clip_text", "unet")
# The UNet taps paired into levels 1-3 by channel concatenation, encoder side first
# (`train_itcross_pn.py:361-373`); level 0 is the VAE's stride-4 tap.
UNET_LEVELS = (("transformer_in", "up2"), ("down0", "up1"), ("down1", "up0"))
NOISE_STATISTICS = ("video", "batch")
# Added to the learned noise's standard deviation (`train_itcross_pn.py:334`).
_NOISE_STD_EPS = 1e-5


@struct.dataclass
class VideoEncoding:
  """The text-independent part of the features of V videos of T frames.

  noisy_latents: (V, T, h, w, latent) VAE latents x scaling_factor with the learned noise
    added at the timestep: the UNet's input.
  image_tokens: (V, T, M, width) projected CLIP image tokens: the cross attention's keys.
  level0: (V, T, H/4, W/4, C0) the VAE's stride-4 tap through act_postprocess[0].
  pad_mask: (V, H, W) bool, True on padding.
  """
  noisy_latents: jax.Array
  image_tokens: jax.Array
  level0: jax.Array
  pad_mask: jax.Array


@struct.dataclass
class Pyramid:
  """The four levels for N captions of T frames, frame index fastest (row n * T + t).

  features: 4 x (N*T, h_l, w_l, C_l) at strides 4, 8, 16, 32, channels last.
  masks: 4 x (N*T, h_l, w_l) bool, True on padding.
  """
  features: tuple[jax.Array, ...]
  masks: tuple[jax.Array, ...]


def level_channels(architectures: Mapping[str, Any]) -> tuple[int, ...]:
  """Input channels of each act_postprocess level (512, 960, 1600, 1920 at full size).

  Args:
    architectures: tower name -> architecture dataclass (`module.config`), at least
      "vae_encoder" and "unet".
  """
  vae = architectures["vae_encoder"]
  taps = unet3d.tap_channels(architectures["unet"])
  return (vae.block_out_channels[vae.tap_block],) + tuple(
      taps[encoder] + taps[decoder] for encoder, decoder in UNET_LEVELS)


def alphas_cumprod(beta_start: float, beta_end: float, num_train_timesteps: int) -> np.ndarray:
  """(num_train_timesteps,) float32 cumulative alphas of diffusers' DDPMScheduler with
  beta_schedule="scaled_linear": betas = linspace(sqrt(start), sqrt(end))^2."""
  betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps,
                      dtype=np.float32)**2
  return np.cumprod(np.float32(1) - betas, dtype=np.float32)


def level_masks(pad_mask: jax.Array, sizes: Sequence[tuple[int, int]], frames: int
                ) -> tuple[jax.Array, ...]:
  """(N, H, W) bool -> per size (N*frames, h, w) bool, frame index fastest.

  torch's legacy nearest resize (source index floor(dst * in / out)), as the original's
  `F.interpolate(m[None].float(), size=x.shape[-2:]).to(torch.bool)`; every frame of a clip
  shares its mask.
  """
  return tuple(jnp.repeat(resize_nearest(pad_mask[..., None], size)[..., 0], frames, axis=0)
               for size in sizes)


def _conv(n_in: int, n_out: int, kernel: int, *, rngs: nnx.Rngs, dtype, param_dtype
          ) -> nnx.Conv:
  """A torch-initialised Conv2d with `kernel // 2` zero padding."""
  pad = kernel // 2
  return nnx.Conv(n_in, n_out, (kernel, kernel), padding=((pad, pad), (pad, pad)),
                  **torch_init.defaults(n_in * kernel * kernel), rngs=rngs, dtype=dtype,
                  param_dtype=param_dtype)


def _check_settings(architectures: Mapping[str, Any], out_channels: Sequence[int],
                    timestep: int, num_train_timesteps: int, noise_statistics: str) -> None:
  """Raises naming the setting (ConfigError) or the towers (ValueError) that do not fit."""
  missing = [name for name in TOWERS_USED if name not in architectures]
  if missing:
    raise ValueError(f"FeatureExtractor: no architecture for tower(s) {missing}")
  if noise_statistics not in NOISE_STATISTICS:
    raise errors.ConfigError(f"config.model.extractor.noise_statistics="
                             f"{noise_statistics!r} is not one of {NOISE_STATISTICS}")
  if not 0 <= timestep < num_train_timesteps:
    raise errors.ConfigError(f"config.model.extractor.timestep={timestep} is outside "
                             f"[0, num_train_timesteps={num_train_timesteps})")
  if len(out_channels) != 4:
    raise errors.ConfigError(f"the pyramid has 4 levels; out_channels (config.model.head."
                             f"in_channels) has {len(out_channels)}: {tuple(out_channels)}")
  vae, unet, text = (architectures[n] for n in ("vae_encoder", "unet", "clip_text"))
  if text.hidden_size != unet.cross_attention_dim:
    raise ValueError(f"FeatureExtractor: the CLIP text width {text.hidden_size} is not the "
                     f"UNet's cross_attention_dim {unet.cross_attention_dim}")
  if vae.latent_channels != unet.in_channels:
    raise ValueError(f"FeatureExtractor: the VAE makes {vae.latent_channels} latent "
                     f"channels, the UNet takes {unet.in_channels}")


class FeatureExtractor(nnx.Module):
  """The trainable adapters and the forward that runs them around the frozen towers.

  Attributes (the original's state-dict names):
    cross_attn: text states (queries) x projected image tokens -> per-frame UNet context.
    projection: CLIP image tokens -> the text width.
    noise_pred, noise_fc: the learned noise (conv3x3, then a per-pixel bias-free MLP with
      ReLU and Sigmoid; indexes 1 and 3 of `noise_fc` are those activations, as in the
      original's nn.Sequential).
    act_postprocess: per level two 1x1 convs, C_in -> 2 C_out -> C_out (C_out -> C_out at
      level 3), no activation.
  """

  def __init__(self, architectures: Mapping[str, Any], *, out_channels: Sequence[int],
               mean: Sequence[float], std: Sequence[float], sample_latents: bool,
               timestep: int, beta_start: float, beta_end: float, num_train_timesteps: int,
               noise_statistics: str, fusion_heads: int, fusion_ffn_dim: int,
               fusion_ln_eps: float, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    """Builds the adapters for the towers `architectures` describes.

    Args:
      architectures: tower name -> architecture dataclass (each tower module's `.config`)
        for the four names of TOWERS_USED.
      out_channels: the pyramid's channels (config.model.head.in_channels).
      mean, std: the frames' normalisation statistics (config.data.mean / std).
      sample_latents, ...: config.model.extractor (configs/common.py), see there.
      rngs: the adapters' initialisation (torch's default initialisation, as the original
        trains them from scratch).
    """
    _check_settings(architectures, out_channels, timestep, num_train_timesteps,
                    noise_statistics)
    vae, vision, text = (architectures[n] for n in ("vae_encoder", "clip_vision", "clip_text"))
    self.mean, self.std = tuple(mean), tuple(std)
    self.sample_latents, self.timestep = sample_latents, timestep
    self.noise_statistics = noise_statistics
    self.latent_scale = vae.scaling_factor
    abar = alphas_cumprod(beta_start, beta_end, num_train_timesteps)[timestep]
    # DDPMScheduler.add_noise's factors, float32 as there: 0.999575 and 0.029155 at t=0.
    self.signal_scale = float(abar**0.5)
    self.noise_scale = float((np.float32(1) - abar)**0.5)
    self.clip_preprocess = CLIPPreprocessConfig(shortest_edge=vision.image_size,
                                                crop_size=vision.image_size)

    dt = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    width, latent = text.hidden_size, vae.latent_channels
    self.cross_attn = CrossAttention(width, heads=fusion_heads, ffn_dim=fusion_ffn_dim,
                                     ln_eps=fusion_ln_eps, **dt)
    self.projection = ResidualProjection(vision.hidden_size, width, **dt)
    self.noise_pred = _conv(latent, latent, 3, **dt)
    linear = lambda: nnx.Linear(latent, latent, use_bias=False, **torch_init.defaults(latent),
                                **dt)
    self.noise_fc = nnx.List([linear(), jax.nn.relu, linear(), jax.nn.sigmoid])
    hidden = [2 * c for c in out_channels[:3]] + [out_channels[3]]
    self.act_postprocess = nnx.List([
        nnx.List([_conv(c_in, c_mid, 1, **dt), _conv(c_mid, c_out, 1, **dt)])
        for c_in, c_mid, c_out in zip(level_channels(architectures), hidden, out_channels)])

  def __call__(self, towers: Mapping[str, nnx.Module], frames: jax.Array, pad_mask: jax.Array,
               clip_ids: jax.Array, *, rng: jax.Array | None = None,
               deterministic_latents: bool = False) -> Pyramid:
    """The pyramid of B clips, one caption each: `pyramid(encode_video(...), clip_ids)`.

    Args as `encode_video`, plus clip_ids (B, L) int, the caption of each clip.
    """
    video = self.encode_video(towers, frames, pad_mask, rng=rng,
                              deterministic_latents=deterministic_latents)
    return self.pyramid(towers, video, clip_ids)

  def encode_video(self, towers: Mapping[str, nnx.Module], frames: jax.Array,
                   pad_mask: jax.Array, *, rng: jax.Array | None = None,
                   deterministic_latents: bool = False) -> VideoEncoding:
    """Everything that does not depend on the caption, for V videos of T frames.

    Args:
      towers: name -> frozen tower module; uses "vae_encoder" and "clip_vision".
      frames: (V, T, H, W, 3) uint8, as the pipelines yield them.
      pad_mask: (V, H, W) bool, True on padding.
      rng: the key of the VAE posterior sample (the original samples), or (V,) typed keys,
        one per video (`vae.DiagonalGaussian.sample`); unused when the latents are the
        posterior mean.
      deterministic_latents: use the posterior mean even where `sample_latents` is set (a
        deviation from the original, for reproducible inference).
    """
    sample = self.sample_latents and not deterministic_latents
    if sample and rng is None:
      raise ValueError("FeatureExtractor: sampling the VAE posterior (sample_latents=True) "
                       "needs `rng`; pass one, or deterministic_latents=True for the mean")
    images = backbone_frames(frames, pad_mask, self.mean, self.std)
    videos, num_frames = images.shape[:2]
    images = images.reshape((videos * num_frames,) + images.shape[2:])
    by_video = lambda x: x.reshape((videos, num_frames) + x.shape[1:])

    posterior, tap = towers["vae_encoder"](images)
    latents = posterior.sample(rng) if sample else posterior.mean
    latents = jax.lax.stop_gradient(latents * self.latent_scale)
    tokens, _ = towers["clip_vision"](clip_pixels(images, self.clip_preprocess))
    return VideoEncoding(
        noisy_latents=self.noisy_latents(by_video(latents)),
        image_tokens=by_video(self.projection(jax.lax.stop_gradient(tokens))),
        level0=by_video(self.postprocess(0, jax.lax.stop_gradient(tap))),
        pad_mask=pad_mask)

  def pyramid(self, towers: Mapping[str, nnx.Module], video: VideoEncoding,
              clip_ids: jax.Array, video_index: jax.Array | None = None) -> Pyramid:
    """The features of N captions over their videos' frames.

    Args:
      towers: name -> frozen tower module; uses "clip_text" and "unet".
      video: `encode_video` of V videos.
      clip_ids: (N, L) int CLIP token ids, padded with the tokenizer's pad token; encoded
        with the causal mask only, no padding mask, as ModelScope and the original do.
      video_index: (N,) int in [0, V), the video of each caption; None means N == V and
        caption n belongs to video n.

    Returns:
      The Pyramid of the N captions (rows n * T + t).
    """
    if video_index is not None:
      video = jax.tree.map(lambda x: jnp.take(x, video_index, axis=0), video)
    captions, num_frames = video.noisy_latents.shape[:2]
    if clip_ids.shape[0] != captions:
      raise ValueError(f"FeatureExtractor.pyramid: {clip_ids.shape[0]} captions for "
                       f"{captions} videos; pass video_index to share a video's encoding")
    text = jax.lax.stop_gradient(towers["clip_text"](clip_ids))
    context = self.context(text, video.image_tokens)
    taps = towers["unet"].features(video.noisy_latents, self.timestep, context)
    features = [video.level0.reshape((-1,) + video.level0.shape[2:])] + self.unet_levels(taps)
    masks = level_masks(video.pad_mask, [x.shape[1:3] for x in features], num_frames)
    return Pyramid(features=tuple(features), masks=masks)

  def context(self, text: jax.Array, image_tokens: jax.Array) -> jax.Array:
    """The UNet's per-frame context: each frame's caption states (N, L, D) attending to that
    frame's projected image tokens (N, T, M, D) -> (N, T, L, D)."""
    captions, num_frames = image_tokens.shape[:2]
    tokens = image_tokens.reshape((-1,) + image_tokens.shape[2:])
    context = self.cross_attn(jnp.repeat(text, num_frames, axis=0), tokens)
    return context.reshape((captions, num_frames) + context.shape[1:])

  def unet_levels(self, taps: Mapping[str, jax.Array]) -> list[jax.Array]:
    """Levels 1-3 of the pyramid, (N*T, h, w, C_l), from the UNet's taps (N, T, h, w, c)
    (`UNet3DConditionModel.features`): UNET_LEVELS' pairs through act_postprocess."""
    levels = []
    for level, (encoder, decoder) in enumerate(UNET_LEVELS, start=1):
      pair = jnp.concatenate([taps[encoder], taps[decoder]], axis=-1)
      levels.append(self.postprocess(level, pair.reshape((-1,) + pair.shape[2:])))
    return levels

  def noisy_latents(self, latents: jax.Array) -> jax.Array:
    """Latents (V, T, h, w, c) plus the learned noise, at the timestep.

    The noise is noise_fc(noise_pred(latents)), standardised with one mean and one unbiased
    std (+ 1e-5) per video ("video") or over the whole batch ("batch", the original's
    arithmetic, whose batch was one video), then added as DDPMScheduler.add_noise does.
    """
    noise = self.noise_pred(latents.reshape((-1,) + latents.shape[2:]))
    for layer in self.noise_fc:
      noise = layer(noise)
    noise = noise.reshape(latents.shape)
    axes = tuple(range(1, noise.ndim)) if self.noise_statistics == "video" else None
    mean = noise.mean(axis=axes, keepdims=True)
    std = noise.std(axis=axes, ddof=1, keepdims=True)
    noise = (noise - mean) / (std + _NOISE_STD_EPS)
    return self.signal_scale * latents + self.noise_scale * noise

  def postprocess(self, level: int, x: jax.Array) -> jax.Array:
    """act_postprocess[level]: (N, h, w, C_in) -> (N, h, w, C_out)."""
    for conv in self.act_postprocess[level]:
      x = conv(x)
    return x
