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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, tiny=False)
  config = common.base("ytvos", raw_dir="data/ref-youtube-vos")
  # 1e-4 base lr x 2 GPUs / 4 (main.py's auto-scaling without pretrained weights) = 5e-5,
  # which the model card confirms.
  common.add_training(config, lr=5e-5, epochs=9, lr_drops=(6, 8))
  # window 0 runs each video whole, as the original does; a positive window splits it.
  config.eval = common.evaluation("valid", "ytvos_submission", window=0, size_divisor=16)
  if args.tiny:
    config = common.shrink_to_tiny(config)
  return config
