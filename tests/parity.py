"""What every PyTorch parity test shares: randomised reference models, the tolerance rule and
the compile options.

The issue's rule for a port in fp32: max abs error <= 1e-4 x max(1, max|reference|).
"""

import jax
import numpy as np
import torch

from vdit_jax import xla_options

# Tests compile at XLA's lowest optimisation level: half the compile time of the default on
# these graphs, and numerics stay within the parity tolerance.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# The same as XLA_FLAGS, for the tests' subprocesses.
FAST_COMPILE_FLAGS = " ".join(f"--{k}={str(v).lower()}" for k, v in FAST_COMPILE.items())


def compiled(fn, *args):
  """fn jitted and compiled for these arguments (pytrees of arrays): the production options
  (so tests run the kernels users get) plus FAST_COMPILE."""
  return jax.jit(fn).lower(*args).compile({**xla_options.for_backend(), **FAST_COMPILE})


def randomized(model: torch.nn.Module, std: float, *, seed: int = 0,
               norm_scales_near_one: bool = False) -> torch.nn.Module:
  """`model` in eval mode with every parameter drawn from N(0, std), so no layer passes by
  default (norm scales and biases included). norm_scales_near_one adds 1 to the weights of
  modules named "norm...", keeping deep stacks of norms well conditioned."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.normal_(0.0, std)
      if norm_scales_near_one and "norm" in name and name.endswith("weight"):
        p.add_(1.0)
  return model.eval()


def assert_close(got, ref, name: str = "output") -> None:
  """The port tolerance, with the measured error in the failure message."""
  got, ref = np.asarray(got, np.float32), np.asarray(ref)
  assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
  err, tol = np.abs(got - ref).max(), 1e-4 * max(1.0, np.abs(ref).max())
  assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:.3g}"
