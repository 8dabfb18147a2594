r"""Ref-DAVIS17: evaluation of the Ref-YouTube-VOS model (no DAVIS training, as in the paper).

  python -m vdit_jax.main --config=configs/davis.py --workdir=workdirs/ytvos --mode=eval

Clips of at most 36 frames, each of the 4 annotators' expressions per object, probabilities
below 0.5 zeroed, a constant 0.1 background and an argmax into one id map per frame (VD-IT
inference_davis.py); J&F is averaged over the 4 annotator runs (the original leaves that to
the user). Written to <workdir>/eval/davis/anno_<k>/ and scored against data.davis_dir.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, tiny=False)
  config = common.base("davis", raw_dir="data/ref-davis")
  config.data.davis_dir = "data/DAVIS"
  # DAVIS 2017 480p frames come out 360 x 640.
  config.eval = common.evaluation("valid", queries="best", window=36, size_divisor=16,
                                  size_buckets=((368, 640), (640, 368)),
                                  # The constant score of the background channel of the
                                  # argmax (VD-IT inference_davis.py:260).
                                  background_score=0.1,
                                  # The DAVIS image set scored, ImageSets/2017/<image_set>.txt.
                                  image_set="val")
  if args.tiny:
    config = common.shrink_to_tiny(config)
    config.data.davis_dir = "data/synthetic/davis/DAVIS"
  return config
