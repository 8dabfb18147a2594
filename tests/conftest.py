"""Test session set-up: 8 fake CPU devices, parsed absl flags, fast collective time-outs.

Everything here must run before JAX initialises its backend, so it sits at import time of
the conftest, which pytest loads before any test module.
"""

import os

# A hung collective (a fake-device program waiting for a peer that never comes) fails in
# 10 s, not 40 s.
_XLA_FLAGS = "--xla_cpu_collective_call_terminate_timeout_seconds=10"
if _XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _XLA_FLAGS).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402  (must follow the XLA_FLAGS set-up)

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_threefry_partitionable", True)

from absl import flags  # noqa: E402

# grain's multiprocess workers read absl flags; under pytest nobody parses them.
flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def num_devices():
  """The fake device count every sharding test is written for."""
  n = len(jax.devices())
  assert n == 8, f"expected 8 fake CPU devices, got {n}: was JAX initialised before conftest?"
  return n
