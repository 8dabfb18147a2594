"""Command line of the weight converters: `python -m vdit_jax.convert backbone ...`.

See vdit_jax.convert.backbone for the sources and the output layout.
"""

import argparse
import sys

from vdit_jax import errors
from vdit_jax.convert import backbone


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
  return parser.parse_args(argv)


def _convert_backbone(args: argparse.Namespace) -> None:
  sources = {"modelscope": args.modelscope, "clip_vision": args.clip_vision,
             "roberta": args.roberta}
  manifest = backbone.convert_backbone(sources, args.out, dtype=args.dtype,
                                       overwrite=args.overwrite)
  total = sum(t["parameters"] for t in manifest["towers"].values())
  print(f"wrote {args.out}: {', '.join(manifest['towers'])} ({total:,} parameters, "
        f"{args.dtype}), tokenizers {', '.join(manifest['tokenizers'])}")


def main(argv=None) -> int:
  """Runs the command; returns the exit status (0 ok, 1 bad input, 2 usage)."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  return errors.run_command(lambda: _convert_backbone(args), verbose=args.verbose)


if __name__ == "__main__":
  sys.exit(main())
