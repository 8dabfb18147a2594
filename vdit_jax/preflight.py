"""Checks that a run's inputs exist before any work starts, naming the command that makes each.

A missing dataset, converted backbone or checkpoint is the most common first-run failure;
reporting it as one clear line (what path, which command creates it) beats a stack trace
from deep inside grain or Orbax.
"""

import dataclasses
import os

import ml_collections

from vdit_jax import backbone_format


@dataclasses.dataclass(frozen=True)
class Requirement:
  """A path a run needs and the command that creates it."""
  what: str
  path: str
  command: str

  def exists(self) -> bool:
    return os.path.exists(self.path)

  def message(self) -> str:
    return f"{self.what} not found: {self.path}\n  Create it with:\n    {self.command}"


def shards(config: ml_collections.ConfigDict, split: str) -> list[Requirement]:
  """The built shards of one split of the config's dataset (RefCOCO: one per subset), or with
  data.format "tfds" the TFDS dataset holding it."""
  data = config.data
  if data.raw_dir.startswith("data/synthetic/"):
    make_raw = (f"python -m data_pipelines.synthetic --dataset {data.dataset} "
                f"--out {data.raw_dir} && ")
  else:
    make_raw = ""
  splits = [f"{subset}/{split}" for subset in data.get("subsets", ())] or [split]
  build = f"{make_raw}python -m data_pipelines.build --dataset {data.dataset} --raw {data.raw_dir}"
  if data.format == "tfds":
    from data_pipelines import tfds_builders  # Deferred: an optional extra.
    names = [tfds_builders.name_and_split(data.dataset, name)[0] for name in splits]
    return [Requirement(
        what=f"{data.dataset} TFDS dataset {name}",
        path=os.path.join(tfds_builders.dataset_dir(data.tfds_dir, name), "dataset_info.json"),
        command=f"{build} --out {data.tfds_dir} --format tfds") for name in names]
  return [Requirement(
      what=f"{data.dataset} {name} shards",
      path=os.path.join(data.shards_dir, name, "dataset_info.json"),
      command=f"{build} --split {name} --out {data.shards_dir}")
          for name in splits]


def backbone(config: ml_collections.ConfigDict) -> Requirement | None:
  """The converted frozen towers; None for random towers (`config.model.random_towers`)."""
  weights_dir = config.model.weights_dir
  if not weights_dir:
    return None
  return Requirement(
      what="converted backbone weights",
      path=backbone_format.manifest_path(weights_dir),
      command=backbone_format.CONVERT_COMMAND.format(out=weights_dir))


def checkpoint(workdir: str, config_flag: str) -> Requirement:
  """A trained checkpoint in the workdir."""
  return Requirement(
      what="trained checkpoint",
      path=os.path.join(workdir, "checkpoints"),
      command=f"python -m vdit_jax.main --config={config_flag} --workdir={workdir} --mode=train")


def requirements(config: ml_collections.ConfigDict, mode: str, workdir: str,
                 config_flag: str) -> list[Requirement]:
  """Everything `mode` needs, in the order a user should create them."""
  needs = []
  if mode == "train":
    needs.extend(shards(config, config.data.split))
  if mode == "eval":
    needs.extend(shards(config, config.eval.split))
  needs.append(backbone(config))
  if mode == "eval" and config.eval.checkpoint:
    needs.append(Requirement(
        what="checkpoint to evaluate (config.eval.checkpoint)", path=config.eval.checkpoint,
        command="python -m vdit_jax.convert vdit --checkpoint vdit.pth --out "
                f"{config.eval.checkpoint}, or a run's export / checkpoint directory"))
  elif mode in ("eval", "export"):
    needs.append(checkpoint(workdir, config_flag))
  return [need for need in needs if need is not None]


def first_missing(needs: list[Requirement]) -> Requirement | None:
  return next((need for need in needs if not need.exists()), None)
