"""VD-IT at configs/ytvos.py:tiny under `vdit_jax.train.train`, on global batches
(tests/global_batches.py) of synthetic clips, and a command that trains it: the training
tests' subprocesses (a single device, restarts, SIGTERM, two processes).

  python tests/vdit_tiny.py --workdir DIR --max_steps N [--devices 8] [--mesh data:2,fsdp:4]
      [--checkpoint_every_steps K] [--keep N] [--record FILE]
      [--coordinator HOST:PORT --num_processes 2 --process_id I]
"""

import argparse
import functools
import os
import sys

import grain
import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs import ytvos  # noqa: E402
from vdit_jax import checkpoints, tokenizers, train  # noqa: E402
from vdit_jax.models import vdit  # noqa: E402

import global_batches  # noqa: E402

FRAMES, HEIGHT, WIDTH = 2, 64, 96
STEPS_PER_EPOCH = 4


class _Clip(grain.transforms.Map):
  """Sample index -> a clip of a white box moving over noise, padded to (HEIGHT, WIDTH) from
  48 x 80 for odd indices, with a caption; a function of the index alone."""

  def __init__(self, tokenize: tokenizers.CaptionTokenizer):
    self._tokenize = tokenize

  def map(self, index):
    rng = np.random.default_rng(int(index))
    h, w = (48, 80) if index % 2 else (HEIGHT, WIDTH)
    frames = np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    frames[:, :h, :w] = rng.integers(0, 256, (FRAMES, h, w, 3), dtype=np.uint8)
    masks = np.zeros((FRAMES, HEIGHT, WIDTH), bool)
    boxes = np.zeros((FRAMES, 4), np.float32)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    for t in range(FRAMES):
      y1, x1 = y0 + h // 3, x0 + t * 4 + w // 3
      masks[t, y0:y1, x0 + t * 4:x1] = True
      boxes[t] = [(x0 + t * 4 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0 - t * 4) / w,
                  (y1 - y0) / h]
    frames[masks] = 255
    pad_mask = np.ones((HEIGHT, WIDTH), bool)
    pad_mask[:h, :w] = False
    return dict(frames=frames, pad_mask=pad_mask, masks=masks, boxes=boxes,
                valid=np.ones(FRAMES, bool), annotated=np.ones(FRAMES, bool),
                size=np.array([h, w], np.int32), index=np.int32(index),
                **self._tokenize(f"the white box number {index}"))


def config(max_steps: int, mesh=(("data", 2), ("fsdp", 4))):
  """configs/ytvos.py:tiny with 8 clips a batch, an epoch of STEPS_PER_EPOCH steps and Adam's
  epsilon at 1e-3.

  Adam's first update is g / (|g| + eps): with eps 1e-8, a rounding difference in a
  gradient entry near zero (another summation order on another mesh) flips it between -lr
  and +lr. With 1e-3 the update is near linear in the gradient, so runs on different meshes
  can be compared parameter by parameter.
  """
  c = ytvos.get_config("tiny")
  c.mesh = tuple(mesh)
  c.data.batch_size = 8
  c.schedule.update(epochs=2, lr_drops=(1,), max_steps=max_steps)
  c.optimizer.eps = 1e-3
  return c


def run(workdir: str, c, *, record: str | None = None) -> train.Outcome:
  tokenize = tokenizers.CaptionTokenizer.for_model(c.model.weights_dir, **c.data.text)
  return train.train(
      c, workdir, make_model=lambda rules: vdit.build(c, rules=rules),
      loss_fn=lambda model, batch, rng: model.loss(batch, rng, **c.loss),
      make_data=functools.partial(global_batches.make_data, example=_Clip(tokenize),
                                  batch_size=c.data.batch_size, seed=c.seed, record=record),
      steps_per_epoch=STEPS_PER_EPOCH, backbone=checkpoints.backbone_reference(c.model, c.seed))


def main(argv) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--max_steps", type=int, required=True)
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--mesh", default="data:2,fsdp:4")
  parser.add_argument("--checkpoint_every_steps", type=int, default=2)
  parser.add_argument("--keep", type=int, default=3)
  parser.add_argument("--record")
  parser.add_argument("--coordinator")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  args = parser.parse_args(argv)
  jax.config.update("jax_num_cpu_devices", args.devices)
  jax.config.update("jax_threefry_partitionable", True)
  if args.coordinator:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               initialization_timeout=60)
  mesh = [(name, int(size)) for name, size in (a.split(":") for a in args.mesh.split(","))]
  c = config(args.max_steps, mesh)
  c.update(checkpoint_every_steps=args.checkpoint_every_steps, keep_checkpoints=args.keep)
  outcome = run(args.workdir, c, record=args.record)
  print(f"done: step {outcome.step} preempted {outcome.preempted}", flush=True)
  return 0


if __name__ == "__main__":
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  sys.exit(main(sys.argv[1:]))
