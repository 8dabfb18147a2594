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
  # Overall and mean IoU of each subset's val split. COCO images come out 360 on the
  # shorter side, at most 640 on the longer.
  config.eval = common.evaluation("val", queries="all", window=1, size_divisor=32,
                                  size_buckets=((384, 512), (512, 384), (384, 640), (640, 384)))
  if args.tiny:
    config = common.shrink_to_tiny(config)
    config.data.subsets = ("refcoco",)
  config.evals = ml_collections.ConfigDict(dict(
      refcoco=common.evaluator(config, every_steps=0 if args.tiny else 5000, num_videos=200)))
  return config
