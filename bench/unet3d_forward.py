"""Jitted Flax UNet3D forward vs diffusers PyTorch forward on the same CPU, same weights.

Mid-size ModelScope-shaped config (block_out_channels 64/128/256/256, everything else as the
real model), random weights moved by the production converter, compiled with the project's
CPU options (vdit_jax/xla_options.py). Prints the JAX compile
time, median step times of both, the JAX/PyTorch ratio and the output difference.

  python bench/unet3d_forward.py [--frames 5] [--height 32] [--width 40] [--rounds 4 --steps 3]
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import UNet3DConditionModel as TorchUNet3D
from flax import nnx

from timing import alternating_medians
from vdit_jax import xla_options
from vdit_jax.convert.diffusers import unet3d_from_diffusers
from vdit_jax.models.unet3d import MODELSCOPE_CONFIG

# ModelScope's UNet at a quarter of its widths.
CONFIG = {**{k: v for k, v in MODELSCOPE_CONFIG.items() if not k.startswith("_")},
          "block_out_channels": (64, 128, 256, 256)}
CONTEXT_LEN = 77
TIMESTEP = 0


def models_and_inputs(batch: int, frames: int, height: int, width: int):
  """(diffusers model, converted NNX model, sample (B, F, H, W, 4), context (B, L, D))."""
  torch.manual_seed(0)
  torch_model = TorchUNet3D(**CONFIG).eval()
  with torch.no_grad():
    for p in torch_model.parameters():
      p.normal_(0.0, 0.02)
  rng = np.random.default_rng(0)
  sample = rng.standard_normal((batch, frames, height, width, 4), np.float32)
  context = rng.standard_normal((batch, CONTEXT_LEN, CONFIG["cross_attention_dim"]), np.float32)
  return torch_model, unet3d_from_diffusers(torch_model), sample, context


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
  """--frames, --height, --width of the sample `models_and_inputs` builds (latent size)."""
  parser.add_argument("--frames", type=int, default=5)
  parser.add_argument("--height", type=int, default=32)
  parser.add_argument("--width", type=int, default=40)


def torch_sample(sample: np.ndarray) -> torch.Tensor:
  """(B, F, H, W, C) -> diffusers' (B, C, F, H, W)."""
  return torch.from_numpy(np.ascontiguousarray(sample.transpose(0, 4, 1, 2, 3)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1)
  add_input_arguments(parser)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per block")
  parser.add_argument("--rounds", type=int, default=4,
                      help="alternating blocks per framework; more smooth out a noisy machine")
  args = parser.parse_args()

  threads = os.cpu_count()
  torch.set_num_threads(threads)
  torch_model, model, sample, context = models_and_inputs(
      args.batch, args.frames, args.height, args.width)
  shape = sample.shape
  torch_x = torch_sample(sample)
  torch_context = torch.from_numpy(context)

  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda st, x, c: nnx.merge(graphdef, st)(x, TIMESTEP, c))
  x, c = jnp.asarray(sample), jnp.asarray(context)
  start = time.perf_counter()
  compiled = forward.lower(state, x, c).compile(xla_options.for_backend())
  compile_s = time.perf_counter() - start
  out = np.asarray(compiled(state, x, c))

  def torch_step():
    with torch.no_grad():
      return torch_model(torch_x, TIMESTEP, torch_context).sample

  ref = torch_step().numpy().transpose(0, 2, 3, 4, 1)
  jax_s, torch_s = alternating_medians(
      [lambda: compiled(state, x, c).block_until_ready(), torch_step], args.steps, args.rounds)

  print(f"config {CONFIG}, sample (B, F, H, W, C) = {shape}, context {context.shape}")
  print(f"CPU threads: os.cpu_count() = {threads} (XLA default), torch.set_num_threads({threads});"
        f" jax {jax.__version__}, torch {torch.__version__}")
  print(f"jax compile: {compile_s:.1f} s")
  print(f"median of {args.rounds} x {args.steps}: jax {jax_s * 1e3:.0f} ms, "
        f"torch {torch_s * 1e3:.0f} ms, ratio jax/torch {jax_s / torch_s:.2f}")
  print(f"max |jax - torch| = {np.abs(out - ref).max():.2e} (max |torch| {np.abs(ref).max():.2e})")


if __name__ == "__main__":
  main()
