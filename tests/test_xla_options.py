"""The per-backend compiler options: accepted by this jaxlib, and on CPU they move 3x3
convolutions out of YNNPACK's fusions, not dots, without changing the result (checked against
torch)."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from vdit_jax import xla_options

import parity


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_cpu_options_take_convolutions_out_of_library_fusions():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 8, 9, 32)).astype(np.float32)
  w = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
  lowered = jax.jit(_conv).lower(x, w)
  default = lowered.compile()
  ours = lowered.compile(xla_options.for_backend("cpu"))
  # The compiled module names YNNPACK's fusions ynn_fusion*.
  assert "ynn_fusion" in default.as_text()
  assert "ynn_fusion" not in ours.as_text()
  ref = torch.nn.functional.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                   torch.from_numpy(w.transpose(3, 2, 0, 1)), padding=1)
  parity.assert_close(ours(jnp.asarray(x), jnp.asarray(w)), ref.numpy().transpose(0, 2, 3, 1))


def test_cpu_options_keep_dots_in_library_fusions():
  a = np.ones((256, 64), np.float32)
  compiled = jax.jit(jnp.matmul).lower(a, a.T).compile(xla_options.for_backend("cpu"))
  assert "ynn_fusion" in compiled.as_text()


def test_default_backend_options_work_at_the_jit_boundary():
  """The documented use, `jax.jit(fn, compiler_options=for_backend())`, on this CPU machine:
  the convolution leaves YNNPACK and the jitted function still computes torch's result."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1, 6, 7, 16)).astype(np.float32)
  w = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
  jitted = jax.jit(_conv, compiler_options=xla_options.for_backend())
  assert "ynn_fusion" not in jitted.lower(x, w).compile().as_text()
  ref = torch.nn.functional.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                   torch.from_numpy(w.transpose(3, 2, 0, 1)), padding=1)
  parity.assert_close(jitted(x, w), ref.numpy().transpose(0, 2, 3, 1))
