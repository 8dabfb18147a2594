r"""A2D-Sentences: fine-tuning from RefCOCO pretraining, then mAP / overall IoU / mean IoU.

  python -m vdit_jax.main --config=configs/a2d.py --workdir=workdirs/a2d \
      --config.init_from=workdirs/refcoco/checkpoints/LATEST
  python -m vdit_jax.main --config=configs/a2d.py --workdir=workdirs/a2d --mode=eval

The head runs on the annotated frame of each 5-frame clip; class_embed is re-initialised
when starting from RefCOCO weights (VD-IT tools/load_pretrained_weights.py).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, tiny=False)
  config = common.base("a2d", raw_dir="data/a2d_sentences")
  # 1e-4 x 2 GPUs / 8: the original's auto-scaling when pretrained weights are given.
  common.add_training(config, lr=2.5e-5, epochs=6, lr_drops=(3, 5))
  config.init_skip = ("class_embed",)
  config.eval = common.sentence_eval()
  config.model.head_frames = "annotated"
  if args.tiny:
    config = common.shrink_to_tiny(config)
  config.evals = ml_collections.ConfigDict(dict(
      a2d=common.evaluator(config, every_steps=0 if args.tiny else 2000, num_videos=50)))
  return config
