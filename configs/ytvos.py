r"""Ref-YouTube-VOS: the paper's recipe (VD-IT opts.py and
scripts/dist_train_ytvos_vdit.sh).

Train (2 GPUs x 1 clip of 5 frames in the original; here a global batch of 2 over the mesh):
  python -m vdit_jax.main --config=configs/ytvos.py --workdir=workdirs/ytvos
Evaluate on the 202-video valid split and write the CodaLab submission:
  python -m vdit_jax.main --config=configs/ytvos.py --workdir=workdirs/ytvos --mode=eval
The tiny variant (random tiny towers, synthetic data) runs on a laptop CPU:
  python -m vdit_jax.main --config=configs/ytvos.py:tiny --workdir=/tmp/vdit_tiny
"""

import ml_collections

from configs import common
from configs import davis


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, tiny=False)
  config = common.base("ytvos", raw_dir="data/ref-youtube-vos")
  # 1e-4 base lr x 2 GPUs / 4 (main.py's auto-scaling without pretrained weights) = 5e-5,
  # which the model card confirms.
  common.add_training(config, lr=5e-5, epochs=9, lr_drops=(6, 8))
  # window 0 runs each video whole, as the original does; a positive window splits it. The
  # valid videos have 4 to 36 frames, resized to 360 x 640 or less (640 x 360 portrait).
  config.eval = common.evaluation("valid", queries="best", window=0, size_divisor=16,
                                  frame_buckets=(9, 18, 27, 36),
                                  size_buckets=((368, 640), (640, 368)), ground_truth=True)
  if args.tiny:
    config = common.shrink_to_tiny(config)
  # Ref-YouTube-VOS valid has no public masks: training is checked on Ref-DAVIS17, as the
  # paper evaluates this model zero-shot (the tiny variant only when asked,
  # --config.evals.davis.every_steps=N).
  config.evals = ml_collections.ConfigDict(dict(
      davis=common.evaluator(davis.get_config(arg), every_steps=0 if args.tiny else 5000,
                             num_videos=6)))
  return config
