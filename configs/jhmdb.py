r"""JHMDB-Sentences: evaluation of the A2D model (no JHMDB training, as in the paper).

  python -m vdit_jax.main --config=configs/jhmdb.py --workdir=workdirs/a2d --mode=eval
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, tiny=False)
  config = common.base("jhmdb", raw_dir="data/jhmdb_sentences")
  config.eval = common.sentence_eval()
  config.model.head_frames = "annotated"
  if args.tiny:
    config = common.shrink_to_tiny(config)
  return config
