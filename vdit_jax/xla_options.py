"""XLA compiler options for the project's jitted model functions, per backend.

Pass them at the jit boundary: `jax.jit(fn, compiler_options=xla_options.for_backend())`, or
`jax.jit(fn).lower(...).compile(xla_options.for_backend())`.
"""

import jax

# XLA's CPU backend hands convolutions, single dots and reductions to YNNPACK by default
# (jaxlib 0.10). YNNPACK runs the UNet's 3x3 convolutions with 64 output channels on one
# thread, at half torch's speed; XLA's own (Eigen) convolutions use every core and made the
# UNet3D bench forward about 5% faster. Dots and reductions stay with YNNPACK.
_CPU = {"xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def for_backend(backend: str | None = None) -> dict[str, str]:
  """Compiler options for `backend` ('cpu', 'gpu', 'tpu'; default: JAX's default backend)."""
  backend = backend or jax.default_backend()
  return dict(_CPU) if backend == "cpu" else {}
