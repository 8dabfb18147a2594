"""Tiny byte-level BPE tokenizer directories (vocab.json + merges.txt) for the tests.

Each vocabulary holds the 256 byte symbols, a few merges and the special tokens, so any
text tokenizes, and transformers' CLIPTokenizer / RobertaTokenizerFast load the same files.
"""

import json


def byte_symbols() -> list[str]:
  """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2's table)."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
  moved = [b for b in range(256) if b not in keep]
  table = dict(zip(keep, keep)) | {b: 256 + i for i, b in enumerate(moved)}
  return [chr(table[b]) for b in range(256)]


def _write_bpe(directory, vocab_tokens, merges, **json_files):
  directory.mkdir(parents=True, exist_ok=True)
  vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_tokens))}
  (directory / "vocab.json").write_text(json.dumps(vocab))
  (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
  for name, content in json_files.items():
    (directory / f"{name}.json").write_text(json.dumps(content))
  return directory


CLIP_MERGES = ["t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>", "r u", "ru n</w>",
               "do g", "dog s</w>", "ca f"]


def clip_dir(directory, **json_files):
  """A CLIP tokenizer directory at `directory` (a pathlib.Path); `json_files`: name -> content
  of extra <name>.json files (tokenizer_config, special_tokens_map)."""
  symbols = byte_symbols()
  tokens = (symbols + [s + "</w>" for s in symbols]
            + ["".join(m.split()) for m in CLIP_MERGES] + ["<|startoftext|>", "<|endoftext|>"])
  return _write_bpe(directory, tokens, CLIP_MERGES, **json_files)


# ModelScope's tokenizer directory: tokenizer_config.json says <|endoftext|>, the
# special-tokens map says "!" (which transformers applies last).
MODELSCOPE_FILES = dict(tokenizer_config={"model_max_length": 77, "pad_token": "<|endoftext|>",
                                          "tokenizer_class": "CLIPTokenizer"},
                        special_tokens_map={"pad_token": {"content": "!", "lstrip": False}})


ROBERTA_MERGES = ["Ġ t", "Ġt h", "Ġth e", "c a", "Ġ ca", "Ġca t", "T h", "Th e", "Ġ d", "Ġd o",
                  "Ġdo g", "r u", "Ġ ru", "Ġru n", "Ġrun s"]


def roberta_dir(directory, **json_files):
  """A RoBERTa tokenizer directory at `directory`, as clip_dir."""
  tokens = (["<s>", "<pad>", "</s>", "<unk>"] + byte_symbols()
            + ["".join(m.split()) for m in ROBERTA_MERGES] + ["<mask>"])
  return _write_bpe(directory, tokens, ROBERTA_MERGES, **json_files)
