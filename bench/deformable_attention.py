"""Jitted JAX `ms_deform_attn` vs the PyTorch grid_sample formulation, forward and
forward+backward, on the same CPU cores.

Shapes of the full-size encoder's attention: frames of 384x640 give levels 48x80, 24x40, 12x20
and 6x10 (strides 8 to 64), 8 heads x 32 channels, 4 points, every token a query. Sampling
locations are what an encoder produces: each query's own pixel centre on every level plus
N(0, p+1)-pixel offsets for point p (the spread of the original's initial polar grid), so
neighbouring queries read neighbouring pixels. PyTorch runs VD-IT's ms_deform_attn_core_pytorch
formulation (tests/deformable_reference.py). The process is pinned to --threads cores, which
sizes XLA's thread pool, and torch.set_num_threads gets the same number. Timing blocks
alternate between the two (bench/timing.py). Prints compile time, median step times, the
largest differences of the output and the gradients, and last the forward+backward ratio.

  python bench/deformable_attention.py [--frames 5] [--height 384] [--width 640] [--threads 2]
"""

import argparse
import os
import sys
import time

import jax
import numpy as np
import torch

from timing import alternating_medians
from vdit_jax import xla_options
from vdit_jax.models.deformable import ms_deform_attn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from deformable_reference import grid_sample_attention  # noqa: E402

HEADS, HEAD_DIM, POINTS = 8, 32, 4
STRIDES = (8, 16, 32, 64)


def inputs(frames: int, height: int, width: int, seed: int = 0):
  """(spatial shapes, value, locations, weights, cotangent) as float32 numpy arrays."""
  shapes = tuple((-(-height // s), -(-width // s)) for s in STRIDES)
  s = sum(h * w for h, w in shapes)
  rng = np.random.default_rng(seed)
  centres = np.concatenate([
      np.stack(np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h), -1)
      .reshape(-1, 2) for h, w in shapes])
  sizes = np.array([(w, h) for h, w in shapes], np.float32)
  offsets = rng.standard_normal((frames, s, HEADS, len(shapes), POINTS, 2))
  offsets *= np.arange(1, POINTS + 1)[:, None]
  locations = centres[None, :, None, None, None] + offsets / sizes[:, None, :]
  logits = rng.standard_normal((frames, s, HEADS, len(shapes) * POINTS))
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  value = rng.standard_normal((frames, s, HEADS, HEAD_DIM))
  cotangent = rng.standard_normal((frames, s, HEADS * HEAD_DIM))
  as32 = lambda x: x.astype(np.float32)
  return (shapes, as32(value), as32(locations),
          as32(weights.reshape(frames, s, HEADS, len(shapes), POINTS)), as32(cotangent))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--frames", type=int, default=5)
  parser.add_argument("--height", type=int, default=384)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--steps", type=int, default=2, help="timed steps per block")
  parser.add_argument("--rounds", type=int, default=4,
                      help="alternating blocks per framework; more smooth out a noisy machine")
  args = parser.parse_args()

  # Before JAX's first use starts its CPU client, whose thread pool takes the size of the
  # affinity mask.
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
  torch.set_num_threads(args.threads)

  shapes, *arrays = inputs(args.frames, args.height, args.width)
  value, locations, weights, cotangent = (jax.numpy.asarray(x) for x in arrays)
  attend = lambda v, l, w: ms_deform_attn(v, shapes, l, w)

  def forward_backward(v, l, w, g):
    out, pull = jax.vjp(attend, v, l, w)
    return out, pull(g)

  start = time.perf_counter()
  options = xla_options.for_backend()
  forward = jax.jit(attend).lower(value, locations, weights).compile(options)
  both = jax.jit(forward_backward).lower(value, locations, weights, cotangent).compile(options)
  compile_s = time.perf_counter() - start

  t_value, t_locations, t_weights = (torch.tensor(x, requires_grad=True) for x in arrays[:3])
  t_cotangent = torch.from_numpy(arrays[3])

  def torch_forward():
    with torch.no_grad():
      return grid_sample_attention(t_value, shapes, t_locations, t_weights)

  def torch_both():
    for t in (t_value, t_locations, t_weights):
      t.grad = None
    out = grid_sample_attention(t_value, shapes, t_locations, t_weights)
    out.backward(t_cotangent)
    return out

  out, grads = both(value, locations, weights, cotangent)
  t_out = torch_both()
  refs = [t.detach().numpy() for t in (t_out, t_value.grad, t_locations.grad, t_weights.grad)]
  diffs = [np.abs(np.asarray(a) - b).max() / max(1, np.abs(b).max())
           for a, b in zip((out, *grads), refs)]
  jax_fwd, torch_fwd, jax_both, torch_both_s = alternating_medians(
      [lambda: forward(value, locations, weights).block_until_ready(), torch_forward,
       lambda: jax.block_until_ready(both(value, locations, weights, cotangent)), torch_both],
      args.steps, args.rounds)

  s = sum(h * w for h, w in shapes)
  print(f"levels {shapes}, {args.frames} frames x {s} queries, {HEADS} heads x {HEAD_DIM} "
        f"channels, {POINTS} points")
  print(f"CPU threads: {args.threads} (affinity) for XLA, torch.set_num_threads({args.threads}); "
        f"jax {jax.__version__}, torch {torch.__version__}")
  print(f"jax compile (forward and forward+backward): {compile_s:.1f} s")
  print("max |jax - torch| / max(1, max |torch|): output {:.1e}, grad value {:.1e}, "
        "grad locations {:.1e}, grad weights {:.1e}".format(*diffs))
  print(f"median of {args.rounds} x {args.steps}: forward jax {jax_fwd * 1e3:.0f} ms, torch "
        f"{torch_fwd * 1e3:.0f} ms; forward+backward jax {jax_both * 1e3:.0f} ms, torch "
        f"{torch_both_s * 1e3:.0f} ms")
  print(f"forward JAX / PyTorch: {jax_fwd / torch_fwd:.2f}")
  print(f"forward+backward JAX / PyTorch: {jax_both / torch_both_s:.2f}")


if __name__ == "__main__":
  main()
