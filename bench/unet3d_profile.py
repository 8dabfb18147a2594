"""Where the UNet3D forward spends its time, module by module, in JAX and in PyTorch.

Same config, weights and inputs as bench/unet3d_forward.py. PyTorch: wall time between
forward pre- and post-hooks of each layer. JAX: a jax.profiler trace of the compiled
forward, each XLA CPU kernel event mapped to its layer through a named scope, time split
evenly among kernels that run at the same moment. Prints one row per layer kind and block
(e.g. u3.resnets sums up_blocks.3.resnets.*), largest JAX time first.

JAX compiles with XLA's default CPU options, not the project's (vdit_jax/xla_options.py):
those run convolutions as XLA's own asynchronous kernels, whose trace events cover only
their dispatch, so the resnet rows would show next to nothing.

  python bench/unet3d_profile.py [--frames 5] [--height 32] [--width 40] [--steps 3]
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import torch
from flax import nnx

from unet3d_forward import TIMESTEP, add_input_arguments, models_and_inputs, torch_sample
from vdit_jax.models import resnet, transformer_blocks, unet3d_layers

LAYERS = (resnet.ResnetBlock2D, resnet.Downsample2D, resnet.Upsample2D,
          unet3d_layers.TemporalConvLayer, transformer_blocks.Transformer2DModel,
          transformer_blocks.TransformerTemporalModel)
# Scope names survive into XLA's op_name metadata only as identifier characters.
_SCOPE = re.compile(r"LAYER_(\w+?)_END")


def row(path: str) -> str:
  """'up_blocks.3.resnets.1' -> 'u3.resnets'; top-level names unchanged."""
  path = re.sub(r"^(down|up)_blocks\.(\d+)\.", lambda m: f"{m.group(1)[0]}{m.group(2)}.", path)
  return re.sub(r"\.\d+$", "", path.replace("mid_block.", "mid."))


def torch_times(model, sample, context, steps: int) -> dict[str, float]:
  """Seconds per forward of each layer, by module path."""
  totals, starts = collections.defaultdict(float), {}
  kinds = {cls.__name__ for cls in LAYERS}
  for name, module in model.named_modules():
    if type(module).__name__ in kinds:
      module.register_forward_pre_hook(
          lambda *_, name=name: starts.__setitem__(name, time.perf_counter()))
      module.register_forward_hook(lambda *_, name=name: totals.__setitem__(
          name, totals[name] + time.perf_counter() - starts[name]))
  with torch.no_grad():
    model(sample, TIMESTEP, context)
    totals.clear()
    for _ in range(steps):
      model(sample, TIMESTEP, context)
  return {name: t / steps for name, t in totals.items()}


def _scoped(names: dict[int, str]):
  """Wraps every LAYERS class's __call__ in a named scope naming the instance's path."""
  for cls in LAYERS:
    call = cls.__call__

    def scoped_call(self, *args, _call=call, **kwargs):
      with jax.named_scope(f"LAYER_{names[id(self)].replace('.', '__')}_END"):
        return _call(self, *args, **kwargs)
    cls.__call__ = scoped_call


def jax_times(model, sample, context, steps: int) -> dict[str, float]:
  """Seconds per forward of each layer, by module path ('other' outside the layers)."""
  names = {}
  _scoped(names)
  graphdef, state = nnx.split(model)

  def forward(st, x, c):
    merged = nnx.merge(graphdef, st)
    names.update((id(m), ".".join(map(str, p))) for p, m in nnx.iter_graph(merged))
    return merged(x, TIMESTEP, c)

  x, c = jnp.asarray(sample), jnp.asarray(context)
  compiled = jax.jit(forward).lower(state, x, c).compile()
  layer_of = {}
  for line in compiled.as_text().splitlines():
    match = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*op_name="([^"]*)"', line)
    if match:
      scope = _SCOPE.search(match.group(2))
      layer_of[match.group(1)] = scope.group(1).replace("__", ".") if scope else "other"
  compiled(state, x, c).block_until_ready()
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
      compiled(state, x, c).block_until_ready()
    jax.profiler.stop_trace()
    trace_file, = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(trace_file) as f:
      events = [e for e in json.load(f)["traceEvents"]
                if e.get("ph") == "X" and e["name"] in layer_of]
  return _apportion(events, layer_of, steps)


def _apportion(events, layer_of: dict[str, str], steps: int) -> dict[str, float]:
  """Sweeps the kernel events in time order, splitting each moment among those running."""
  edges = sorted([(e["ts"], 1, e["name"]) for e in events] +
                 [(e["ts"] + e["dur"], -1, e["name"]) for e in events])
  running, totals, last = collections.Counter(), collections.defaultdict(float), None
  for ts, step, name in edges:
    if running:
      share = (ts - last) / sum(running.values())
      for kernel, count in running.items():
        totals[layer_of[kernel]] += share * count
    last = ts
    running[name] += step
    if not running[name]:
      del running[name]
  return {name: us * 1e-6 / steps for name, us in totals.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_input_arguments(parser)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  torch_model, model, sample, context = models_and_inputs(1, args.frames, args.height,
                                                          args.width)
  by_torch = torch_times(torch_model, torch_sample(sample), torch.from_numpy(context),
                         args.steps)
  by_jax = jax_times(model, sample, context, args.steps)
  rows = collections.defaultdict(lambda: [0.0, 0.0])
  for column, times in enumerate((by_jax, by_torch)):
    for path, seconds in times.items():
      rows[row(path)][column] += seconds * 1e3
  print(f"{'layer':24s} {'jax ms':>8s} {'torch ms':>9s} {'diff':>8s}")
  for name, (jax_ms, torch_ms) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
    print(f"{name:24s} {jax_ms:8.1f} {torch_ms:9.1f} {jax_ms - torch_ms:+8.1f}")
  print(f"{'sum':24s} {sum(r[0] for r in rows.values()):8.1f} "
        f"{sum(r[1] for r in rows.values()):9.1f}  (torch's excludes conv_in/out, time "
        "embedding and glue; jax's 'other' holds them)")


if __name__ == "__main__":
  main()
