"""CLIP and RoBERTa tokenizers built with the `tokenizers` library from local files.

Nothing is downloaded: a tokenizer directory holds either `tokenizer.json` or the BPE pair
`vocab.json` + `merges.txt`, and optionally `special_tokens_map.json` /
`tokenizer_config.json` naming the special tokens (the special-tokens map wins, as in
transformers; ModelScope's text-to-video tokenizer pads with "!" there). `save` writes
`tokenizer.json`, `vocab.json`, `merges.txt` and `tokenizer_config.json`, a directory that
this module and transformers both load.

The pipelines match transformers 5.x `CLIPTokenizer` (NFC, whitespace collapse, lower case,
CLIP's split regex, byte-level BPE with "</w>" word ends, <|startoftext|> ... <|endoftext|>)
and `RobertaTokenizer` (byte-level BPE, <s> ... </s>). Declared special tokens are added as
special tokens, so a pad token such as "!" is also split out of the text as its own token,
exactly as transformers does.

`CaptionTokenizer` is what the data pipelines call on each caption: both tokenizers at fixed
lengths (config.data.text), so that the text towers see one shape and compile once. The
original pads RoBERTa's input to the batch's longest caption; the extra padding is masked
out, so the real tokens' hidden states do not change, and a caption longer than the fixed
length is truncated, counted and logged.
"""

import dataclasses
import json
import os
import tempfile
from typing import Sequence

from absl import logging
import numpy as np
import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from vdit_jax import backbone_format

CLIP_MAX_LENGTH = 77
# OpenAI CLIP's pre-tokenisation: special tokens, English contractions, letter runs,
# single digits, runs of other non-space characters.
_CLIP_SPLIT = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
               r"|[^\s\p{L}\p{N}]+")
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  bos_token: str
  eos_token: str
  unk_token: str
  pad_token: str
  mask_token: str | None = None

  def declared(self) -> list[str]:
    return list(dict.fromkeys(t for t in dataclasses.astuple(self) if t is not None))


CLIP_SPECIAL = SpecialTokens("<|startoftext|>", "<|endoftext|>", "<|endoftext|>",
                             "<|endoftext|>")
ROBERTA_SPECIAL = SpecialTokens("<s>", "</s>", "<unk>", "<pad>", "<mask>")


class Tokenizer:
  """A `tokenizers.Tokenizer` with a padding policy, called on a batch of strings.

  max_length set: truncate (keeping the special tokens) and pad every row to max_length
  (CLIP). max_length None: no truncation, pad to the longest row (RoBERTa, padding='longest').
  """

  def __init__(self, backend: tokenizers.Tokenizer, kind: str, special: SpecialTokens,
               max_length: int | None):
    self.backend, self.kind, self.special, self.max_length = backend, kind, special, max_length
    self.pad_id = self._id(special.pad_token)
    backend.add_special_tokens(special.declared())
    if max_length is None:
      backend.no_truncation()
      backend.enable_padding(pad_id=self.pad_id, pad_token=special.pad_token)
    else:
      backend.enable_truncation(max_length)
      backend.enable_padding(pad_id=self.pad_id, pad_token=special.pad_token,
                             length=max_length)

  def _id(self, token: str) -> int:
    token_id = self.backend.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{self.kind} tokenizer: special token {token!r} is not in the vocab")
    return token_id

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """texts -> (input_ids (B, L) int32, attention_mask (B, L) int32, 1 on real tokens)."""
    if isinstance(texts, str):
      raise TypeError("pass a sequence of strings, not a single string")
    encodings = self.backend.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], np.int32).reshape(len(encodings), -1)
    mask = np.array([e.attention_mask for e in encodings], np.int32).reshape(ids.shape)
    return ids, mask

  def fixed_length(self, max_length: int) -> "Tokenizer":
    """A copy that truncates (keeping the special tokens) and pads every row to max_length."""
    backend = tokenizers.Tokenizer.from_str(self.backend.to_str())
    return Tokenizer(backend, self.kind, self.special, max_length)

  def save(self, directory: str | os.PathLike) -> None:
    """Writes tokenizer.json, vocab.json, merges.txt and tokenizer_config.json."""
    os.makedirs(directory, exist_ok=True)
    self.backend.save(os.path.join(directory, "tokenizer.json"))
    self.backend.model.save(os.fspath(directory))
    config = {k: v for k, v in dataclasses.asdict(self.special).items() if v is not None}
    config["tokenizer_class"] = {"clip": "CLIPTokenizer", "roberta": "RobertaTokenizer"}[self.kind]
    if self.max_length is not None:
      config["model_max_length"] = self.max_length
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)


def _token_text(value) -> str | None:
  """A special-token entry of a config file: a string or an AddedToken dict."""
  if isinstance(value, dict):
    return value.get("content")
  return value


def _read_special(directory: str, defaults: SpecialTokens) -> SpecialTokens:
  found = {}
  for name in ("tokenizer_config.json", "special_tokens_map.json"):  # later files win
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        entries = json.load(f)
      found.update({k: _token_text(entries[k]) for k in _SPECIAL_NAMES
                    if entries.get(k) is not None})
  fields = {f.name for f in dataclasses.fields(defaults)}
  return dataclasses.replace(defaults, **{k: v for k, v in found.items() if k in fields})


def _load_bpe(directory: str, special: SpecialTokens, **bpe_options) -> tokenizers.Tokenizer:
  """A bare BPE model from vocab.json + merges.txt; the caller adds the pipeline around it."""
  vocab, merges = (os.path.join(directory, n) for n in ("vocab.json", "merges.txt"))
  if not (os.path.isfile(vocab) and os.path.isfile(merges)):
    found = ", ".join(sorted(os.listdir(directory))) if os.path.isdir(directory) else "no dir"
    raise FileNotFoundError(f"{directory}: needs tokenizer.json or vocab.json + merges.txt "
                            f"(found: {found})")
  return tokenizers.Tokenizer(BPE.from_file(vocab, merges, unk_token=special.unk_token,
                                            fuse_unk=False, **bpe_options))


def _saved_backend(directory: str) -> tokenizers.Tokenizer | None:
  path = os.path.join(directory, "tokenizer.json")
  return tokenizers.Tokenizer.from_file(path) if os.path.isfile(path) else None


def clip_tokenizer(directory: str | os.PathLike, max_length: int = CLIP_MAX_LENGTH
                   ) -> Tokenizer:
  """CLIP BPE tokenizer: truncation and padding to `max_length`, with the source's pad token."""
  directory = os.fspath(directory)
  special = _read_special(directory, CLIP_SPECIAL)
  backend = _saved_backend(directory)
  if backend is None:
    backend = _load_bpe(directory, special, continuing_subword_prefix="",
                        end_of_word_suffix="</w>")
    backend.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
        normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = _wrap_processor(backend, special, trim_offsets=False)
  return Tokenizer(backend, "clip", special, max_length)


def roberta_tokenizer(directory: str | os.PathLike) -> Tokenizer:
  """RoBERTa byte-level BPE tokenizer, no truncation, padding to the longest row."""
  directory = os.fspath(directory)
  special = _read_special(directory, ROBERTA_SPECIAL)
  backend = _saved_backend(directory)
  if backend is None:
    backend = _load_bpe(directory, special, continuing_subword_prefix="",
                        end_of_word_suffix="")
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = _wrap_processor(backend, special, trim_offsets=True)
  return Tokenizer(backend, "roberta", special, None)


def _wrap_processor(backend: tokenizers.Tokenizer, special: SpecialTokens, *,
                    trim_offsets: bool) -> processors.PostProcessor:
  """bos ... eos around every sequence."""
  ids = {}
  for token in (special.bos_token, special.eos_token):
    ids[token] = backend.token_to_id(token)
    if ids[token] is None:
      raise ValueError(f"special token {token!r} is not in the vocab")
  return processors.RobertaProcessing((special.eos_token, ids[special.eos_token]),
                                      (special.bos_token, ids[special.bos_token]),
                                      trim_offsets=trim_offsets, add_prefix_space=False)


class CaptionTokenizer:
  """caption -> {"clip_ids", "clip_mask", "roberta_ids", "roberta_mask"}, fixed shapes.

  What the data pipelines call per example (data_pipelines.pipeline's `tokenize`): ids
  (L,) int32 and attention masks (L,) int32 (1 on real tokens), L = clip_max_length for
  CLIP (padded with the tokenizer's pad token, "!" for ModelScope's) and
  roberta_max_length for RoBERTa (padded with <pad>). Captions longer than L tokens are
  truncated, keeping the closing special token; each tokenizer counts them and logs the
  1st, 10th, 100th, ... one. Picklable, as grain worker processes need; each process
  counts its own.
  """

  def __init__(self, clip: Tokenizer, roberta: Tokenizer, *, clip_max_length: int,
               roberta_max_length: int):
    self._tokenizers = {"clip": clip.fixed_length(clip_max_length),
                        "roberta": roberta.fixed_length(roberta_max_length)}
    self._captions = 0
    self._truncated = dict.fromkeys(self._tokenizers, 0)

  @classmethod
  def for_model(cls, weights_dir: str, **lengths: int) -> "CaptionTokenizer":
    """The tokenizers of `config.model.weights_dir`, or byte-level ones for random towers
    (weights_dir ""); `lengths`: config.data.text."""
    if weights_dir:
      return cls.from_backbone(weights_dir, **lengths)
    return cls(**byte_level_tokenizers(), **lengths)

  @classmethod
  def from_backbone(cls, directory: str | os.PathLike, **lengths: int) -> "CaptionTokenizer":
    """The tokenizers of a converted backbone directory (tokenizers/clip, tokenizers/roberta);
    `lengths`: config.data.text."""
    return cls(**load_from_backbone(directory), **lengths)

  def truncated_counts(self) -> dict[str, int]:
    """{"captions": tokenized so far, "clip": truncated by CLIP, "roberta": by RoBERTa}."""
    return {"captions": self._captions, **self._truncated}

  def __call__(self, caption: str) -> dict[str, np.ndarray]:
    self._captions += 1
    arrays = {}
    for name, tokenizer in self._tokenizers.items():
      encoding = tokenizer.backend.encode(caption)
      if encoding.overflowing:
        self._count_truncation(name, tokenizer.max_length, caption)
      arrays[f"{name}_ids"] = np.array(encoding.ids, np.int32)
      arrays[f"{name}_mask"] = np.array(encoding.attention_mask, np.int32)
    return arrays

  def _count_truncation(self, name: str, max_length: int, caption: str) -> None:
    self._truncated[name] += 1
    count = self._truncated[name]
    if count == 10 ** (len(str(count)) - 1):
      logging.warning("%s tokenizer: %d of %d captions so far were longer than %d tokens and "
                      "truncated (config.data.text), e.g. %r", name, count, self._captions,
                      max_length, caption)


# Tokenizer name (backbone_format.TOKENIZERS) -> loader of a tokenizer directory.
LOADERS = {"clip": clip_tokenizer, "roberta": roberta_tokenizer}


def load_from_backbone(directory: str | os.PathLike) -> dict[str, Tokenizer]:
  """{'clip': CLIP tokenizer, 'roberta': RoBERTa tokenizer} of a converted backbone directory."""
  directory = os.fspath(directory)
  manifest = backbone_format.read_manifest(directory)
  absent = [n for n in LOADERS if n not in manifest["tokenizers"]]
  if absent:
    raise backbone_format.ConvertedBackboneError(
        directory, f"no converted tokenizer {', '.join(absent)}")
  return {name: load(backbone_format.tokenizer_dir(directory, name))
          for name, load in LOADERS.items()}


def byte_level_tokenizers() -> dict[str, Tokenizer]:
  """{'clip', 'roberta'} tokenizers whose vocabularies are the 256 byte symbols (CLIP's also
  with the word-end mark) and the special tokens, with no merges: every text tokenizes, one
  token per byte. For random towers (the tiny configs), which no released vocabulary fits."""
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocabularies = {
      "clip": alphabet + [c + "</w>" for c in alphabet] + [CLIP_SPECIAL.bos_token,
                                                           CLIP_SPECIAL.eos_token],
      "roberta": [ROBERTA_SPECIAL.bos_token, ROBERTA_SPECIAL.pad_token,
                  ROBERTA_SPECIAL.eos_token, ROBERTA_SPECIAL.unk_token] + alphabet
                 + [ROBERTA_SPECIAL.mask_token],
  }
  with tempfile.TemporaryDirectory() as tmp:
    for name, vocabulary in vocabularies.items():
      os.makedirs(os.path.join(tmp, name))
      with open(os.path.join(tmp, name, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(vocabulary)}, f)
      with open(os.path.join(tmp, name, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return {name: LOADERS[name](os.path.join(tmp, name)) for name in vocabularies}
