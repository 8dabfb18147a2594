r"""RefCOCO / RefCOCO+ / RefCOCOg pretraining on 5-frame pseudo-videos, and RIS evaluation.

  python -m vdit_jax.main --config=configs/refcoco.py --workdir=workdirs/refcoco
  python -m vdit_jax.main --config=configs/refcoco.py --workdir=workdirs/refcoco --mode=eval

VD-IT shipped no pretraining script. The data path is its
`joint_coco` option (all three sets, each image turned into a 5-frame pseudo-video); the
schedule and the 1e-4 x 2/4 learning rate follow ReferFormer's RefCOCO recipe scaled the way
VD-IT scales its own. Treat these as our choice, not the paper's.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, tiny=False)
  config = common.base("refcoco", raw_dir="data/coco")
  common.add_training(config, lr=5e-5, epochs=12, lr_drops=(8, 10), shuffle_window=4096)
  config.data.subsets = ("refcoco", "refcoco+", "refcocog")
  config.eval = common.evaluation("val", "refcoco_predictions", window=1, size_divisor=32)
  if args.tiny:
    config = common.shrink_to_tiny(config)
    config.data.subsets = ("refcoco",)
  return config
