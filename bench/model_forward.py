"""VD-IT's inference forward component by component: CPU time at a mid-size config, and the
full-size FLOPs from XLA's cost analysis.

Components, in the order the model runs them (vdit_jax/models/extractor.py, vdit.py):
  VAE encoder       de-normalised frames -> posterior mean x 0.18215 and the stride-4 tap
  CLIP vision       the CLIP crop of each frame -> 257 image tokens (last hidden state)
  CLIP text         the caption's 77 token ids -> states
  projection + xattn  image tokens -> `projection` -> `cross_attn` with the caption: the
                    UNet's per-frame context
  noise             `noise_pred`, `noise_fc`, standardisation, add_noise at t=0
  UNet features     UNet3DConditionModel.features at t=0: the six taps
  adapters          act_postprocess on the VAE tap and the three tap pairs
  RoBERTa           the caption for the head
  head              ReferringHead (deformable encoder / decoder, dynamic masks) and the mask
                    refinement of the best query
and the whole `VDIT.predict` under one jit, whose time the parts should add up to.

Times: every component jitted on its own (XLA's CPU options of vdit_jax/xla_options.py) at a
mid-size config: the towers' structure at about a quarter of their widths (UNet
64/128/256/256 as bench/unet3d_forward.py, VAE 32/64/128/128, CLIP 256 and 320 wide, 4
RoBERTa-base layers), the adapters for those towers, configs/ytvos.py's full-size head,
random weights, T frames at --height x --width. The process is pinned to --threads cores
(sizing XLA's thread pool); timing blocks alternate between the components
(bench/timing.py).

FLOPs: the released towers' architectures with configs/ytvos.py's adapters and head, built
from shapes alone (nnx.eval_shape), each component lowered for T=5 frames at 384x640 and
counted by XLA's HLO cost analysis (2 per multiply-add), traced as GPUs and TPUs run the
model (model_sizes.traced_as_on_accelerators: the CPU paths' lax.map loops would be counted
once, not per chunk). Gathers (deformable attention's sampling) count no FLOPs.

  python bench/model_forward.py [--frames 5] [--height 192] [--width 320] [--threads 2]
      [--no-flops]
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from configs import ytvos as ytvos_config
from model_sizes import MID_TOWERS, traced_as_on_accelerators
from timing import alternating_medians
from vdit_jax import xla_options
from vdit_jax.models import head as head_lib
from vdit_jax.models import vdit
from vdit_jax.models.clip_preprocess import clip_pixels
from vdit_jax.models.normalize import backbone_frames

FULL_SIZE = dict(num_frames=5, height=384, width=640)


# ---- the components: (model, values so far) -> new values ----

def _vae(model, x):
  ex = model.extractor
  images = backbone_frames(x["frames"], x["pad_mask"], ex.mean, ex.std)
  images = images.reshape((-1,) + images.shape[2:])
  posterior, tap = model.towers["vae_encoder"](images)
  return dict(images=images, latents=posterior.mean * ex.latent_scale, vae_tap=tap)


def _clip_vision(model, x):
  tokens, _ = model.towers["clip_vision"](clip_pixels(x["images"],
                                                      model.extractor.clip_preprocess))
  return dict(image_tokens=tokens)


def _clip_text(model, x):
  return dict(text=model.towers["clip_text"](x["clip_ids"]))


def _fusion(model, x):
  tokens = model.extractor.projection(x["image_tokens"])
  return dict(context=model.extractor.context(x["text"], _by_video(tokens, x)))


def _noise(model, x):
  return dict(noisy=model.extractor.noisy_latents(_by_video(x["latents"], x)))


def _unet(model, x):
  return dict(taps=model.towers["unet"].features(x["noisy"], model.extractor.timestep,
                                                 x["context"]))


def _adapters(model, x):
  level0 = model.extractor.postprocess(0, x["vae_tap"])
  return dict(features=[level0] + model.extractor.unet_levels(x["taps"]))


def _roberta(model, x):
  text, _ = model.towers["roberta"](x["roberta_ids"], x["roberta_mask"])
  return dict(roberta=text)


def _head(model, x):
  b, t = x["frames"].shape[:2]
  pad_mask = jnp.broadcast_to(x["pad_mask"][:, None], (b, t) + x["pad_mask"].shape[1:])
  outputs = model.head(x["features"], pad_mask, x["roberta"], x["roberta_mask"].astype(bool),
                       x["size"])
  best = head_lib.select_query(outputs["pred_logits"])
  return dict(masks=model.head.refine(outputs, x["features"], best))


def _by_video(rows, x):
  """(B*T, ...) -> (B, T, ...)."""
  return rows.reshape(x["frames"].shape[:2] + rows.shape[1:])


COMPONENTS = (("VAE encoder", _vae), ("CLIP vision", _clip_vision), ("CLIP text", _clip_text),
              ("projection + cross attention", _fusion), ("noise", _noise),
              ("UNet features", _unet), ("adapters (act_postprocess)", _adapters),
              ("RoBERTa", _roberta), ("head + mask refinement", _head))


WHOLE = "whole VDIT.predict (one jit)"


def _predict(model, x):
  return model.predict(x, queries="best", deterministic_latents=True)


def batch(num_frames: int, height: int, width: int, config, seed: int = 0) -> dict:
  """One clip as the eval pipeline yields it: uint8 frames, the lower-right eighth padded."""
  rng = np.random.default_rng(seed)
  text = config.data.text
  pad_mask = np.zeros((1, height, width), bool)
  pad_mask[:, height * 7 // 8:] = pad_mask[:, :, width * 7 // 8:] = True
  frames = rng.integers(0, 256, (1, num_frames, height, width, 3), dtype=np.uint8)
  frames[np.broadcast_to(pad_mask[:, None], frames.shape[:4])] = 0
  roberta_mask = (np.arange(text.roberta_max_length) < 12)[None].astype(np.int32)
  return dict(frames=frames, pad_mask=pad_mask,
              clip_ids=rng.integers(0, 49408, (1, text.clip_max_length), dtype=np.int32),
              roberta_ids=np.where(roberta_mask, rng.integers(3, 50265, roberta_mask.shape),
                                   1).astype(np.int32),
              roberta_mask=roberta_mask, size=np.array([[height * 7 // 8, width * 7 // 8]],
                                                       np.int32),
              frame_valid=np.ones((1, num_frames), bool),
              annotated=np.ones((1, num_frames), bool))


def _jitted(graphdef, fn):
  return jax.jit(lambda state, x: fn(nnx.merge(graphdef, state), x))


# ---- CPU times at the mid-size config ----

def mid_model(config) -> nnx.Module:
  """vdit.build at `config`, initialised in one jitted computation (eager initialisation of
  the UNet's thousands of small arrays takes minutes)."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: vdit.build(config)))
  return nnx.merge(graphdef, jax.jit(lambda: nnx.state(vdit.build(config)))())


def time_components(args) -> list[tuple[str, float, float, bool]]:
  """[(component, compile s, median s, whether its outputs are finite)] and last the whole
  predict, at the mid-size config."""
  config = ytvos_config.get_config()
  config.model.weights_dir = ""
  config.model.random_towers = ml_collections.ConfigDict(MID_TOWERS)
  model = mid_model(config)
  model.eval()
  graphdef, state = nnx.split(model)
  inputs = {k: jnp.asarray(v) for k, v in batch(args.frames, args.height, args.width,
                                                 config).items()}
  options = xla_options.for_backend()
  values, rows, steps = dict(inputs), [], []
  for name, fn in COMPONENTS + ((WHOLE, _predict),):
    x = inputs if fn is _predict else dict(values)
    start = time.perf_counter()
    compiled = _jitted(graphdef, fn).lower(state, x).compile(options)
    compile_s = time.perf_counter() - start
    out = compiled(state, x)
    finite = all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(out)
                 if jnp.issubdtype(leaf.dtype, jnp.floating))
    rows.append((name, compile_s, finite))
    steps.append(lambda compiled=compiled, x=x: jax.block_until_ready(compiled(state, x)))
    values.update(out)
  medians = alternating_medians(steps, args.steps, args.rounds)
  return [(name, c, m, finite) for (name, c, finite), m in zip(rows, medians)]


# ---- FLOPs at full size ----

def full_size_flops() -> list[tuple[str, float]]:
  """[(component, FLOPs)] + the whole predict, from shapes: the released towers with
  configs/ytvos.py's model, one clip of FULL_SIZE."""
  config = ytvos_config.get_config()
  model = vdit.abstract_released(config)
  model.eval()
  graphdef, state = nnx.split(model)
  inputs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
            for k, v in batch(**FULL_SIZE, config=config).items()}
  values, rows = dict(inputs), []
  with traced_as_on_accelerators():
    for name, fn in COMPONENTS + ((WHOLE, _predict),):
      traced = _jitted(graphdef, fn).trace(state, inputs if fn is _predict else values)
      rows.append((name, traced.lower().cost_analysis()["flops"]))
      values.update(traced.out_info)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--frames", type=int, default=5)
  parser.add_argument("--height", type=int, default=192)
  parser.add_argument("--width", type=int, default=320)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--steps", type=int, default=2, help="timed steps per block")
  parser.add_argument("--rounds", type=int, default=3,
                      help="alternating blocks per component; more smooth out a noisy machine")
  parser.add_argument("--no-flops", action="store_true",
                      help="skip the full-size FLOPs (a few minutes of tracing)")
  args = parser.parse_args()
  # Before JAX's first use starts its CPU client, whose thread pool takes the size of the
  # affinity mask.
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])

  times = time_components(args)
  flops = dict(full_size_flops()) if not args.no_flops else {}
  print("times: mid-size towers (MID_TOWERS), their adapters, configs/ytvos.py's head; "
        f"{args.frames} frames at {args.height}x{args.width}, {args.threads} CPU threads, "
        f"median of {args.rounds} x {args.steps}; jax {jax.__version__}")
  if flops:
    print(f"FLOPs: released towers, configs/ytvos.py; {FULL_SIZE['num_frames']} frames at "
          f"{FULL_SIZE['height']}x{FULL_SIZE['width']}, one caption")
  parts = sum(m for name, _, m, _ in times[:-1])
  total_flops = sum(flops.get(name, 0.0) for name, *_ in times[:-1])
  print("| component | CPU ms (mid-size) | share | compile s | full-size GFLOPs | share |")
  print("|---|---|---|---|---|---|")
  for name, compile_s, median, finite in times:
    whole = name == WHOLE
    gflops = flops.get(name)
    flop_cells = ("" if gflops is None else _gflops(gflops),
                  "" if gflops is None or whole else f"{gflops / total_flops:.1%}")
    print(f"| {name}{'' if finite else ' (non-finite output!)'} | {median * 1e3:,.0f} | "
          f"{'' if whole else f'{median / parts:.1%}'} | {compile_s:.1f} | "
          f"{flop_cells[0]} | {flop_cells[1]} |")
  print(f"| sum of the components | {parts * 1e3:,.0f} | | | "
        f"{_gflops(total_flops) if flops else ''} | |")


def _gflops(flops: float) -> str:
  return f"{flops / 1e9:,.0f}" if flops >= 1e10 else f"{flops / 1e9:.2g}"


if __name__ == "__main__":
  main()
