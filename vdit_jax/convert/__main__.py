"""Command line of the weight converters: `python -m vdit_jax.convert backbone|vdit ...`.

See vdit_jax.convert.backbone (the frozen towers) and vdit_jax.convert.vdit (VD-IT's released
head and adapters) for the sources and the output layouts.
"""

import argparse
import importlib.util
import os
import sys

from vdit_jax import errors
from vdit_jax.convert import backbone, vdit

DEFAULT_CONFIG = "configs/ytvos.py"


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m vdit_jax.convert",
                                   description="Convert PyTorch checkpoints to vdit-jax.")
  commands = parser.add_subparsers(dest="command", required=True)
  sub = commands.add_parser("backbone", help="the frozen UNet, VAE encoder, CLIP and RoBERTa")
  sub.add_argument("--modelscope", required=True,
                   help="damo-vilab/text-to-video-ms-1.7b in diffusers layout")
  sub.add_argument("--clip-vision", required=True,
                   help="laion/CLIP-ViT-H-14-laion2B-s32B-b79K in transformers layout")
  sub.add_argument("--roberta", required=True, help="roberta-base in transformers layout")
  sub.add_argument("--out", required=True, help="output directory (created atomically)")
  sub.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="parameter dtype of the output (default: float32, as VD-IT loads)")
  sub.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  sub.add_argument("--verbose", action="store_true",
                   help="show the traceback of input errors too")
  sub = commands.add_parser("vdit", help="VD-IT's released checkpoint: the trainable head "
                            "and adapters, as an export directory")
  sub.add_argument("--checkpoint", required=True,
                   help="the original's .pth (main.py's dict with 'model', or a state dict)")
  sub.add_argument("--out", required=True, help="output directory (created atomically)")
  sub.add_argument("--config", default=DEFAULT_CONFIG,
                   help="experiment config whose model the parameters are for, as --config "
                   f"takes it (default: {DEFAULT_CONFIG}; a tiny one, e.g. "
                   f"{DEFAULT_CONFIG}:tiny, sizes the adapters for its random towers)")
  sub.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="parameter dtype of the output (default: float32)")
  sub.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  sub.add_argument("--verbose", action="store_true",
                   help="show the traceback of input errors too")
  return parser.parse_args(argv)


def _convert_backbone(args: argparse.Namespace) -> None:
  sources = {"modelscope": args.modelscope, "clip_vision": args.clip_vision,
             "roberta": args.roberta}
  manifest = backbone.convert_backbone(sources, args.out, dtype=args.dtype,
                                       overwrite=args.overwrite)
  total = sum(t["parameters"] for t in manifest["towers"].values())
  print(f"wrote {args.out}: {', '.join(manifest['towers'])} ({total:,} parameters, "
        f"{args.dtype}), tokenizers {', '.join(manifest['tokenizers'])}")


def load_config(spec: str):
  """The ConfigDict of a `path/to/config.py[:arg]` spec (main.py's --config syntax): the
  file's get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise errors.ConfigError(f"--config {spec}: no such file {path}")
  module_spec = importlib.util.spec_from_file_location("_converted_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(arg) if arg else module.get_config()
  except ValueError as e:  # configs.common.parse_arg: an unknown or malformed argument.
    raise errors.ConfigError(f"--config {spec}: {e}") from e


def _convert_vdit(args: argparse.Namespace) -> None:
  config = load_config(args.config)
  manifest = vdit.convert_vdit(args.checkpoint, args.out, config=config, dtype=args.dtype,
                               overwrite=args.overwrite)
  print(f"wrote {args.out}: the head and adapters of {args.checkpoint} (epoch "
        f"{manifest['epoch']}, step {manifest['step']}, {args.dtype}) for {args.config}")


COMMANDS = {"backbone": _convert_backbone, "vdit": _convert_vdit}


def main(argv=None) -> int:
  """Runs the command; returns the exit status (0 ok, 1 bad input, 2 usage)."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  return errors.run_command(lambda: COMMANDS[args.command](args), verbose=args.verbose)


if __name__ == "__main__":
  sys.exit(main())
