"""Peak memory of the backbone converter on a full-size ModelScope UNet (synthetic weights).

  python bench/convert_memory.py [--dir DIR] [--dtype float32|bfloat16]
      [--format safetensors|bin] [--keep]

Writes DIR/modelscope/unet/diffusion_pytorch_model.safetensors with the real UNet's 1,480
tensor names and shapes (diffusers' model built on the meta device; 5.65 GB of random fp32
values, streamed out one tensor at a time), converts it with `convert_backbone` in a
subprocess, and prints the subprocess's peak RSS against the source file size. Goal: <= 1.5x.
With --format bin the source is the same tensors as diffusion_pytorch_model.bin (torch.save
of tensors memory-mapped from the safetensors file) in a directory of its own.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

from vdit_jax.models.unet3d import MODELSCOPE_CONFIG

_CONVERT = """
import sys
from vdit_jax.convert import backbone
towers = {"unet": backbone.backbone_towers()["unet"]}
backbone.convert_backbone({"modelscope": sys.argv[1]}, sys.argv[2], dtype=sys.argv[3],
                          towers=towers, tokenizers={})
"""


def unet_shapes() -> dict[str, tuple[int, ...]]:
  """Key -> shape of the real UNet's state dict, without allocating it."""
  import diffusers
  import torch

  config = {k: v for k, v in MODELSCOPE_CONFIG.items() if not k.startswith("_")}
  with torch.device("meta"):
    model = diffusers.UNet3DConditionModel(**config)
  return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def write_safetensors(path: str, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> None:
  """A float32 safetensors file of random values, written one tensor at a time."""
  header, offset = {}, 0
  for key, shape in shapes.items():
    nbytes = 4 * int(np.prod(shape))
    header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes
  rng = np.random.default_rng(seed)
  with open(path, "wb") as f:
    f.write(len(blob).to_bytes(8, "little") + blob)
    for shape in shapes.values():
      f.write((rng.standard_normal(shape, dtype=np.float32) * 0.02).tobytes())


def write_bin(safetensors_path: str, path: str) -> None:
  """torch.save of the safetensors file's tensors, memory-mapped rather than loaded."""
  import safetensors.torch
  import torch

  torch.save(safetensors.torch.load_file(safetensors_path), path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dir", default="/tmp/convert_memory")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--format", choices=("safetensors", "bin"), default="safetensors")
  parser.add_argument("--keep", action="store_true", help="keep the synthetic sources")
  args = parser.parse_args()
  modelscope = os.path.join(args.dir, "modelscope")
  weights = os.path.join(modelscope, "unet", "diffusion_pytorch_model.safetensors")
  out = os.path.join(args.dir, "converted")
  shutil.rmtree(out, ignore_errors=True)
  if not os.path.isfile(weights):
    os.makedirs(os.path.dirname(weights), exist_ok=True)
    shapes = unet_shapes()
    start = time.perf_counter()
    write_safetensors(weights + ".partial", shapes)
    os.rename(weights + ".partial", weights)
    with open(os.path.join(modelscope, "unet", "config.json"), "w", encoding="utf-8") as f:
      json.dump(MODELSCOPE_CONFIG, f)
    print(f"wrote {len(shapes)} tensors in {time.perf_counter() - start:.0f} s")
  if args.format == "bin":
    safetensors_weights, modelscope = weights, os.path.join(args.dir, "modelscope_bin")
    weights = os.path.join(modelscope, "unet", "diffusion_pytorch_model.bin")
    if not os.path.isfile(weights):
      os.makedirs(os.path.dirname(weights), exist_ok=True)
      shutil.copy(os.path.join(os.path.dirname(safetensors_weights), "config.json"),
                  os.path.dirname(weights))
      write_bin(safetensors_weights, weights + ".partial")
      os.rename(weights + ".partial", weights)
  source_bytes = os.path.getsize(weights)
  start = time.perf_counter()
  subprocess.run([sys.executable, "-c", _CONVERT, modelscope, out, args.dtype], check=True)
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
  out_bytes = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(out)
                  for n in names)
  with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
    parameters = json.load(f)["towers"]["unet"]["parameters"]
  print(f"source file        {os.path.basename(weights)}: {source_bytes / 1e9:.3f} GB "
        f"({parameters:,} parameters)")
  print(f"converted ({args.dtype:8s}) {out_bytes / 1e9:.3f} GB in {seconds:.0f} s")
  print(f"peak RSS           {peak / 1e9:.3f} GB")
  print(f"peak / source      {peak / source_bytes:.2f}x (goal <= 1.5x)")
  shutil.rmtree(out)
  if not args.keep:
    shutil.rmtree(args.dir)


if __name__ == "__main__":
  main()
