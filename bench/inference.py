r"""Inference cost: the text-independent work once per video window, shared by its
expressions (vdit_jax.predict), against the original's scheme (every tower and the whole
UNet again for every expression; VD-IT inference_ytvos.py runs the model per expression).

(a) FLOPs per expression-frame from XLA's cost analysis, per component, from shapes alone
    (nothing is initialised or compiled): the released towers' architectures and the ytvos
    config's adapters and head, T frames of 360x640 padded as the Ref-YouTube-VOS evaluation
    pads them (368x640), for a video with 1 and with 4 expressions.
(b) Wall-clock frames per second per expression on this machine, at a mid-size config on
    CPU: shared (`Predictor`: one encoding, the expressions in one batch) against unshared
    (`Predictor` once per expression: every tower again per expression), in one run.
(c) --gpu: the same timing at full size (random weights of the released architectures),
    360p, the towers in bfloat16 (their default on accelerators), with the peak memory.

  python bench/inference.py                    # (a), then (b)
  python bench/inference.py --full-size-flops  # (a) only; its last line is the ratio
  python bench/inference.py --gpu              # (a), then (c) on the accelerator
  python bench/inference.py --size tiny        # (a) and (b) at the tiny config (CI)
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import ytvos as ytvos_config
from model_sizes import MID_TOWERS, traced_as_on_accelerators
from data_pipelines import eval_windows
from data_pipelines import transforms
from vdit_jax import predict, towers
from vdit_jax.models import head as head_lib
from vdit_jax.models import vdit as vdit_lib
from vdit_jax.models.clip_preprocess import clip_pixels
from vdit_jax.models.extractor import UNET_LEVELS

SIZES = ("full", "mid", "tiny")
# The frames each size runs, (T, H, W) before the evaluation's resize and padding.
FRAMES = {"full": (5, 360, 640), "mid": (5, 176, 320), "tiny": (4, 64, 96)}
TEXTS = ("the man holding a bike", "a dog running on the grass", "the red car on the left",
         "a person in a white shirt", "the smaller cat", "a bird on the fence")
# The expressions per video of the FLOPs table (Ref-YouTube-VOS valid averages about 3.7).
FLOP_EXPRESSIONS = (1, 4)
# Rows of the FLOPs table: (component, whether it runs once per video window in ours).
COMPONENTS = (("VAE encoder", True), ("CLIP vision", True), ("projection", True),
              ("learned noise, level 0", True), ("CLIP text", False), ("cross attention", False),
              ("UNet", False), ("levels 1-3 adapters", False), ("RoBERTa", False),
              ("head", False))


def experiment(size: str):
  """The ytvos config at `size` with random towers (weights_dir ""), its prediction windows
  FRAMES[size][0] long, its evaluation resize taking FRAMES[size] frames as they are."""
  if size == "tiny":
    return ytvos_config.get_config("tiny")  # 4-frame windows, frames 64x96.
  config = ytvos_config.get_config()  # 360x640 frames, padded to 368x640.
  config.model.weights_dir = ""
  t, h, w = FRAMES[size]
  config.predict.window = t
  if size == "full":
    config.model.random_towers = {n: a.to_dict() for n, a in
                                  towers.released_architectures().items()}
    return config
  config.model.random_towers = MID_TOWERS
  config.model.head.text_dim = MID_TOWERS["roberta"]["hidden_size"]
  config.eval.preprocessing.update(short_side=min(h, w), max_size=max(h, w), size_buckets=())
  return config


def padded_size(config, size: str) -> tuple[int, int]:
  """(H, W) the evaluation resizes and pads FRAMES[size] to."""
  pre = eval_windows.Preprocessing(**config.eval.preprocessing)
  _, h, w = FRAMES[size]
  return pre.padded_size(transforms.resized_shape(h, w, pre.short_side, pre.max_size))


def _vae(m, images):
  posterior, tap = m.towers["vae_encoder"](images)
  return posterior.mean, tap


def _head(m, features, pad_mask, text, text_mask, sizes):
  outputs = m.head(features, pad_mask, text, text_mask, sizes)
  return m.head.refine(outputs, features, head_lib.select_query(outputs["pred_logits"]))


def window_flops(config, size: str) -> tuple[dict[str, tuple[float, float]], dict]:
  """FLOPs of one window of FRAMES[size] frames for one expression, per component:
  name -> (original, ours), and of our two stages lowered whole: {"video": encode_video,
  e: segment of e expressions} for e in FLOP_EXPRESSIONS."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: vdit_lib.build(config)))

  def lower(fn, *args) -> tuple[float, object]:
    """(FLOPs, output shapes) of fn(model, *args), traced once."""
    with traced_as_on_accelerators():
      traced = jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s), *a)).trace(state, *args)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), traced.out_info)
    return float(traced.lower().cost_analysis()["flops"]), shapes

  spec = jax.ShapeDtypeStruct
  t = FRAMES[size][0]
  h, w = padded_size(config, size)
  text_lengths = config.data.text
  flops = {}

  def run(name, fn, *args, original=None):
    ours, shapes = lower(fn, *args)
    flops[name] = (ours if original is None else lower(original, *args)[0], ours)
    return shapes

  images = spec((t, h, w, 3), jnp.float32)
  latents, tap = run("VAE encoder", _vae, images)
  tokens = run("CLIP vision", lambda m, x: m.towers["clip_vision"](
      clip_pixels(x, m.extractor.clip_preprocess))[0], images)
  tokens = run("projection", lambda m, x: m.extractor.projection(x), tokens)
  noisy, level0 = run("learned noise, level 0", lambda m, z, x: (
      m.extractor.noisy_latents(z[None]), m.extractor.postprocess(0, x)), latents, tap)
  text = run("CLIP text", lambda m, ids: m.towers["clip_text"](ids),
             spec((1, text_lengths.clip_max_length), jnp.int32))
  context = run("cross attention", lambda m, x, y: m.extractor.cross_attn(
      jnp.repeat(x, t, axis=0), y), text, tokens)
  timestep = int(config.model.extractor.timestep)
  taps = run("UNet", lambda m, z, c: m.towers["unet"].features(z, timestep, c[None]),
             noisy, context,
             original=lambda m, z, c: m.towers["unet"](z, timestep, c[None]))
  levels = run("levels 1-3 adapters", lambda m, taps: [
      m.extractor.postprocess(l, jnp.concatenate([taps[a], taps[b]], -1)[0])
      for l, (a, b) in enumerate(UNET_LEVELS, start=1)], taps)
  roberta = spec((1, text_lengths.roberta_max_length), jnp.int32)
  states, _ = run("RoBERTa", lambda m, ids, mask: m.towers["roberta"](ids, mask), roberta,
                  roberta)
  run("head", _head, [level0] + levels, spec((1, t, h, w), jnp.bool_), states,
      spec(roberta.shape, jnp.bool_), spec((1, 2), jnp.int32))

  frames, pad_mask = spec((1, t, h, w, 3), jnp.uint8), spec((1, h, w), jnp.bool_)
  video_flops, video = lower(lambda m, f, p: m.encode_video(f, p, deterministic_latents=True),
                             frames, pad_mask)
  whole = {"video": video_flops}
  for e in FLOP_EXPRESSIONS:
    batch = dict(clip_ids=spec((e, text_lengths.clip_max_length), jnp.int32),
                 roberta_ids=spec((e,) + roberta.shape[1:], jnp.int32),
                 roberta_mask=spec((e,) + roberta.shape[1:], jnp.int32),
                 size=spec((1, 2), jnp.int32), frame_valid=spec((1, t), jnp.bool_))
    whole[e] = lower(lambda m, v, b: m.segment(v, b, video_index=jnp.zeros(e, jnp.int32)),
                     video, batch)[0]
  return flops, whole


def flops_table(config, size: str) -> list[str]:
  """(a): the table's lines, GFLOP per expression-frame; the last is the ratio at 4."""
  flops, whole = window_flops(config, size)
  t = FRAMES[size][0]
  h, w = padded_size(config, size)
  video = dict(COMPONENTS)
  per_frame = lambda x: x / t / 1e9
  number = lambda x: f"{x:.4g}" if x < 10 else f"{x:.1f}"
  lines = [f"FLOPs per expression-frame, GFLOP (XLA cost analysis, from shapes; {size} size, "
           f"T={t} frames of {FRAMES[size][1]}x{FRAMES[size][2]} padded to {h}x{w})",
           f"{'component':<24}{'runs once per':>15}{'original':>11}"
           + "".join(f"{f'ours, {e} expr':>15}" for e in FLOP_EXPRESSIONS)]
  totals = {"original": 0.0, **{e: 0.0 for e in FLOP_EXPRESSIONS}}
  for name, (original, ours) in flops.items():
    shares = {e: ours / e if video[name] else ours for e in FLOP_EXPRESSIONS}
    totals["original"] += original
    for e in FLOP_EXPRESSIONS:
      totals[e] += shares[e]
    lines.append(f"{name:<24}{'video window' if video[name] else 'expression':>15}"
                 f"{number(per_frame(original)):>11}"
                 + "".join(f"{number(per_frame(shares[e])):>15}" for e in FLOP_EXPRESSIONS))
  lines.append(f"{'total':<39}{number(per_frame(totals['original'])):>11}"
               + "".join(f"{number(per_frame(totals[e])):>15}" for e in FLOP_EXPRESSIONS))
  lines.append(f"{'ours lowered whole (encode_video + segment)':<50}"
               + "".join(f"{number(per_frame((whole['video'] + whole[e]) / e)):>15}"
                         for e in FLOP_EXPRESSIONS))
  lines.append(f"{'vs the original':<50}"
               + "".join(f"{totals[e] / totals['original']:>15.2f}" for e in FLOP_EXPRESSIONS))
  lines.append(f"FLOPs per expression-frame vs the original, {FLOP_EXPRESSIONS[-1]} expressions: "
               f"{totals[FLOP_EXPRESSIONS[-1]] / totals['original']:.2f}")
  return lines


def _peak_memory() -> str:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return "n/a on this backend" if peak is None else f"{peak / 2**30:.1f} GiB"


def timing(config, size: str, expressions: list[int], rounds: int) -> list[str]:
  """(b) / (c): frames per second per expression of the model (jitted model time per
  window, inputs and outputs moved included; median of `rounds`), shared against unshared."""
  config = predict.inference_config(config)
  dtype = config.model.towers.unet.dtype
  if size == "full":
    # As converted weights are loaded for prediction: parameters in the compute dtype.
    for settings in config.model.towers.values():
      settings.param_dtype = dtype
  config.predict.expressions_per_step = max(expressions)
  started = time.perf_counter()
  predictor = predict.Predictor(vdit_lib.build(config), config, deterministic_latents=True)
  built = time.perf_counter() - started
  t, h, w = FRAMES[size]
  frames = np.random.default_rng(0).integers(0, 256, (t, h, w, 3), np.uint8)

  def model_seconds(calls):
    before = predictor.timings["model"]
    for texts in calls:
      predictor(frames, texts)
    return predictor.timings["model"] - before

  schemes = {e: {"shared": [TEXTS[:e]], "unshared": [[x] for x in TEXTS[:e]]}
             for e in expressions}
  for calls in (c for scheme in schemes.values() for c in scheme.values()):
    model_seconds(calls)  # Compiles each shape once.
  seconds = {(e, k): [] for e in expressions for k in ("shared", "unshared")}
  for _ in range(rounds):
    for e, scheme in schemes.items():
      for kind, calls in scheme.items():
        seconds[e, kind].append(model_seconds(calls))
  lines = [f"frames/s per expression, model time (median of {rounds}); {size} size, T={t} "
           f"frames of {h}x{w}, towers {dtype}, {jax.devices()[0].device_kind} "
           f"(build {built:.0f} s, compile {predictor.timings['compile']:.0f} s)",
           f"{'expressions':<12}{'shared':>10}{'unshared':>10}{'shared / unshared':>19}"]
  for e in expressions:
    shared, unshared = (t * e / statistics.median(seconds[e, k])
                        for k in ("shared", "unshared"))
    lines.append(f"{e:<12}{shared:>10.2f}{unshared:>10.2f}{shared / unshared:>19.2f}")
  lines.append(f"peak device memory: {_peak_memory()}")
  return lines


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=SIZES, default=None,
                      help="both parts at this size (default: (a) full, (b) mid)")
  parser.add_argument("--full-size-flops", action="store_true", help="(a) at full size only")
  parser.add_argument("--gpu", action="store_true",
                      help="(c): time the full size on the accelerator")
  parser.add_argument("--expressions", default="1,4",
                      help="comma-separated expression counts of the timing")
  parser.add_argument("--rounds", type=int, default=3, help="timed rounds per scheme")
  args = parser.parse_args(argv)
  flops_size = "full" if args.full_size_flops else args.size or "full"
  print("\n".join(flops_table(experiment(flops_size), flops_size)))
  if args.full_size_flops:
    return
  size = "full" if args.gpu else args.size or "mid"
  expressions = [int(e) for e in args.expressions.split(",")]
  print()
  print("\n".join(timing(experiment(size), size, expressions, args.rounds)))


if __name__ == "__main__":
  main()
