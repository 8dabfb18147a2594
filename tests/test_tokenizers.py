"""CLIP / RoBERTa tokenizers vs transformers' tokenizers loaded from the same local files."""

import json

import numpy as np
import pytest
import transformers

from vdit_jax import tokenizers as vt

SENTENCES = [
    "The cat runs",
    "a dog!",
    "  The   CAT, the Dog; the cat's 3 dogs run...  ",
    "Ünïcode café: the cat runs?!",
    "",
    "the cat " * 60,  # past 77 tokens
    "the <|endoftext|> cat",
]


def _byte_symbols() -> list[str]:
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


def _clip_dir(directory, **json_files):
  symbols = _byte_symbols()
  tokens = (symbols + [s + "</w>" for s in symbols]
            + ["".join(m.split()) for m in CLIP_MERGES] + ["<|startoftext|>", "<|endoftext|>"])
  return _write_bpe(directory, tokens, CLIP_MERGES, **json_files)


def _hf_clip(directory, max_length):
  tok = transformers.CLIPTokenizer.from_pretrained(directory, local_files_only=True)
  enc = tok(SENTENCES, padding="max_length", max_length=max_length, truncation=True,
            return_tensors="np")
  return tok, enc["input_ids"], enc["attention_mask"]


# ModelScope's tokenizer directory: tokenizer_config.json says <|endoftext|>, the
# special-tokens map says "!" (which transformers applies last).
MODELSCOPE_FILES = dict(tokenizer_config={"model_max_length": 77, "pad_token": "<|endoftext|>",
                                          "tokenizer_class": "CLIPTokenizer"},
                        special_tokens_map={"pad_token": {"content": "!", "lstrip": False}})


@pytest.mark.parametrize("files,max_length", [(MODELSCOPE_FILES, 77), (MODELSCOPE_FILES, 8),
                                              ({}, 77)], ids=["modelscope77", "modelscope8",
                                                              "bare77"])
def test_clip_matches_transformers(tmp_path, files, max_length):
  directory = _clip_dir(tmp_path, **files)
  hf, ref_ids, ref_mask = _hf_clip(directory, max_length)
  ids, mask = vt.clip_tokenizer(directory, max_length)(SENTENCES)
  assert ids.shape == (len(SENTENCES), max_length) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_array_equal(mask, ref_mask)
  expected_pad = "!" if files else "<|endoftext|>"
  assert hf.pad_token == expected_pad
  assert (mask == 0).any() and (ids[mask == 0] == hf.convert_tokens_to_ids(expected_pad)).all()
  assert mask[5].all() and ids[5, -1] == hf.eos_token_id  # truncated, eot kept


def test_clip_saved_files_reload_in_both(tmp_path):
  source = _clip_dir(tmp_path / "src", **MODELSCOPE_FILES)
  ids, mask = vt.clip_tokenizer(source)(SENTENCES)
  vt.clip_tokenizer(source).save(tmp_path / "out")
  again, again_mask = vt.clip_tokenizer(tmp_path / "out")(SENTENCES)
  np.testing.assert_array_equal(again, ids)
  np.testing.assert_array_equal(again_mask, mask)
  _, ref_ids, ref_mask = _hf_clip(tmp_path / "out", 77)
  np.testing.assert_array_equal(ref_ids, ids)
  np.testing.assert_array_equal(ref_mask, mask)


ROBERTA_MERGES = ["Ġ t", "Ġt h", "Ġth e", "c a", "Ġ ca", "Ġca t", "T h", "Th e", "Ġ d", "Ġd o",
                  "Ġdo g", "r u", "Ġ ru", "Ġru n", "Ġrun s"]


def _roberta_dir(directory, **json_files):
  tokens = (["<s>", "<pad>", "</s>", "<unk>"] + _byte_symbols()
            + ["".join(m.split()) for m in ROBERTA_MERGES] + ["<mask>"])
  return _write_bpe(directory, tokens, ROBERTA_MERGES, **json_files)


def _hf_roberta(directory):
  tok = transformers.RobertaTokenizerFast.from_pretrained(directory, local_files_only=True)
  enc = tok(SENTENCES + ["The cat <mask> runs"], padding="longest", return_tensors="np")
  return enc["input_ids"], enc["attention_mask"]


def test_roberta_matches_transformers_and_reloads(tmp_path):
  source = _roberta_dir(tmp_path)
  ref_ids, ref_mask = _hf_roberta(source)
  tok = vt.roberta_tokenizer(source)
  ids, mask = tok(SENTENCES + ["The cat <mask> runs"])
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_array_equal(mask, ref_mask)
  assert ids.shape[1] == mask.sum(1).max() > 77  # longest row, no truncation
  assert (ids[mask == 0] == 1).all()  # <pad>
  tok.save(tmp_path / "out")
  again = vt.roberta_tokenizer(tmp_path / "out")(SENTENCES + ["The cat <mask> runs"])
  np.testing.assert_array_equal(again[0], ids)
  np.testing.assert_array_equal(_hf_roberta(tmp_path / "out")[0], ids)


def test_missing_files_are_named(tmp_path):
  (tmp_path / "vocab.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="vocab.json \\+ merges.txt"):
    vt.clip_tokenizer(tmp_path)
  with pytest.raises(TypeError, match="sequence of strings"):
    vt.roberta_tokenizer(_roberta_dir(tmp_path))("a single string")
