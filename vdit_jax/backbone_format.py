"""The converted backbone directory: its layout, manifest and names (imports no JAX, no torch).

`python -m vdit_jax.convert backbone` writes it, `vdit_jax.pretrained` loads it and
`vdit_jax.preflight` checks for it:

  manifest.json         FORMAT, FORMAT_VERSION, the parameter dtype, `towers` (name -> source
                        directory, weights file, tensor and parameter counts), `tokenizers`
                        (name -> source directory and files), `sources`, `created`, `versions`.
  <tower>/config.json   the tower's architecture (`Config.to_dict()`: widths, depths, heads,
                        vocabulary); run-time settings (dtype, remat, ...) come from the
                        experiment config instead.
  <tower>/params/       an Orbax PyTree checkpoint of the tower's nnx.Params: a nested dict
                        keyed by the module's attribute path, list indices as strings
                        (`down_blocks/0/resnets/1/conv1/kernel`).
  tokenizers/<name>/    the tokenizer files (`vdit_jax.tokenizers` save format).
"""

import json
import os

from vdit_jax import errors

FORMAT = "vdit-jax-backbone"
# 2: config.json holds the architecture only (version 1 also stored remat, dropout and the
# single-frame switch).
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
# The towers VD-IT freezes, in conversion order (the slow UNet last).
TOWERS = ("vae_encoder", "clip_text", "clip_vision", "roberta", "unet")
TOKENIZERS = ("clip", "roberta")
# Orbax reads and writes at most this much at a time, so a tower's parameters are the only
# large thing in memory while it is converted or loaded.
CHECKPOINT_CONCURRENT_GB = 0.25
CONVERT_COMMAND = ("python -m vdit_jax.convert backbone --modelscope text-to-video-ms-1.7b "
                   "--clip-vision CLIP-ViT-H-14-laion2B-s32B-b79K --roberta roberta-base "
                   "--out {out}")


class ConvertedBackboneError(errors.UserError, ValueError):
  """The converted directory is missing, incomplete or does not match the models."""

  def __init__(self, directory: str, problem: str):
    super().__init__(f"{directory}: {problem}\nCreate it with:\n  "
                     f"{CONVERT_COMMAND.format(out=directory)}")


def manifest_path(directory: str) -> str:
  return os.path.join(directory, MANIFEST)


def config_path(directory: str, tower: str) -> str:
  return os.path.join(directory, tower, "config.json")


def params_path(directory: str, tower: str) -> str:
  return os.path.join(directory, tower, "params")


def tokenizer_dir(directory: str, name: str) -> str:
  return os.path.join(directory, "tokenizers", name)


def _read_json(directory: str, path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ConvertedBackboneError(directory, f"{path} is not valid JSON ({e})") from e


def read_manifest(directory: str | os.PathLike) -> dict:
  """The manifest of a converted directory, checked for format and version."""
  directory = os.fspath(directory)
  path = manifest_path(directory)
  if not os.path.isfile(path):
    what = "no converted backbone here" if os.path.isdir(directory) else "no such directory"
    raise ConvertedBackboneError(directory, f"{what} ({MANIFEST} not found)")
  manifest = _read_json(directory, path)
  found = (manifest.get("format"), manifest.get("format_version"))
  if found != (FORMAT, FORMAT_VERSION):
    raise ConvertedBackboneError(
        directory, f"{path} is format {found[0]!r} version {found[1]!r}, expected "
        f"{FORMAT!r} version {FORMAT_VERSION} (convert the weights again)")
  return manifest


def read_tower_config(directory: str, tower: str) -> dict:
  """The architecture dict stored for one tower."""
  path = config_path(directory, tower)
  if not os.path.isfile(path):
    raise ConvertedBackboneError(directory, f"{path} is missing")
  return _read_json(directory, path)
