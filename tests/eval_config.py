"""The tiny evaluation config the evaluation tests run on a synthetic dataset."""

import importlib

SIZE = (48, 64)  # The synthetic frames' (H, W).


def tiny_config(dataset: str, split: str, shards_dir: str, davis_dir: str = ""):
  """configs/<dataset>.py:tiny reading `shards_dir`, frames kept at their original size."""
  config = importlib.import_module(f"configs.{dataset}").get_config("tiny")
  config.data.shards_dir = shards_dir
  config.eval.split = split.split("/")[-1]
  # Shorter side = the frames' own: the input is the original, which an oracle's masks must
  # come back to exactly.
  config.eval.preprocessing.update(short_side=min(SIZE), max_size=max(SIZE))
  if dataset == "ytvos":
    config.eval.preprocessing.window = 0
  if dataset == "davis":
    config.data.davis_dir = davis_dir
  return config
