"""CLIP / RoBERTa tokenizers vs transformers' tokenizers loaded from the same local files;
the pipelines' fixed-length CaptionTokenizer vs transformers' tokenizers and RobertaModel."""

import pickle
import shutil

from flax import nnx
import numpy as np
import pytest
import torch
import transformers

from vdit_jax import tokenizers as vt
from vdit_jax.convert import backbone
from vdit_jax.convert import transformers as convert

import parity
import tiny_tokenizers

MODELSCOPE = tiny_tokenizers.MODELSCOPE_FILES

SENTENCES = [
    "The cat runs",
    "a dog!",
    "  The   CAT, the Dog; the cat's 3 dogs run...  ",
    "Ünïcode café: the cat runs?!",
    "",
    "the cat " * 60,  # past 77 tokens
    "the <|endoftext|> cat",
]


def _hf_clip(directory, max_length):
  tok = transformers.CLIPTokenizer.from_pretrained(directory, local_files_only=True)
  enc = tok(SENTENCES, padding="max_length", max_length=max_length, truncation=True,
            return_tensors="np")
  return tok, enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("files,max_length", [(MODELSCOPE, 77), (MODELSCOPE, 8), ({}, 77)],
                         ids=["modelscope77", "modelscope8", "bare77"])
def test_clip_matches_transformers(tmp_path, files, max_length):
  directory = tiny_tokenizers.clip_dir(tmp_path, **files)
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
  source = tiny_tokenizers.clip_dir(tmp_path / "src", **MODELSCOPE)
  ids, mask = vt.clip_tokenizer(source)(SENTENCES)
  vt.clip_tokenizer(source).save(tmp_path / "out")
  again, again_mask = vt.clip_tokenizer(tmp_path / "out")(SENTENCES)
  np.testing.assert_array_equal(again, ids)
  np.testing.assert_array_equal(again_mask, mask)
  _, ref_ids, ref_mask = _hf_clip(tmp_path / "out", 77)
  np.testing.assert_array_equal(ref_ids, ids)
  np.testing.assert_array_equal(ref_mask, mask)


def _hf_roberta(directory):
  tok = transformers.RobertaTokenizerFast.from_pretrained(directory, local_files_only=True)
  enc = tok(SENTENCES + ["The cat <mask> runs"], padding="longest", return_tensors="np")
  return enc["input_ids"], enc["attention_mask"]


def test_roberta_matches_transformers_and_reloads(tmp_path):
  source = tiny_tokenizers.roberta_dir(tmp_path)
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
    vt.roberta_tokenizer(tiny_tokenizers.roberta_dir(tmp_path))("a single string")


# CaptionTokenizer: RoBERTa at a fixed length shorter than "the cat " * 60, CLIP at 77.
ROBERTA_LENGTH = 16
# Shorter than ROBERTA_LENGTH tokens, of different lengths.
CAPTIONS = ["The cat runs", "a dog!", "the dog runs the cat", ""]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokenizers")
  return (tiny_tokenizers.clip_dir(root / "clip", **MODELSCOPE),
          tiny_tokenizers.roberta_dir(root / "roberta"))


def _caption_tokenizer(dirs):
  return vt.CaptionTokenizer(vt.clip_tokenizer(dirs[0]), vt.roberta_tokenizer(dirs[1]),
                             clip_max_length=77, roberta_max_length=ROBERTA_LENGTH)


def _stack(outputs):
  return {k: np.stack([o[k] for o in outputs]) for k in outputs[0]}


def _hf_tokenizers(clip_dir, roberta_dir):
  return (transformers.CLIPTokenizer.from_pretrained(clip_dir, local_files_only=True),
          transformers.RobertaTokenizerFast.from_pretrained(roberta_dir, local_files_only=True))


def _check_fixed_lengths(tokenize, clip, roberta):
  """tokenize (a CaptionTokenizer at 77 / ROBERTA_LENGTH) on SENTENCES == transformers'
  tokenizers with padding="max_length", truncation=True."""
  out = _stack([tokenize(c) for c in SENTENCES])
  for name, hf, length in (("clip", clip, 77), ("roberta", roberta, ROBERTA_LENGTH)):
    ref = hf(SENTENCES, padding="max_length", max_length=length, truncation=True,
             return_tensors="np")
    assert out[f"{name}_ids"].shape == (len(SENTENCES), length)
    assert out[f"{name}_ids"].dtype == out[f"{name}_mask"].dtype == np.int32
    np.testing.assert_array_equal(out[f"{name}_ids"], ref["input_ids"], err_msg=name)
    np.testing.assert_array_equal(out[f"{name}_mask"], ref["attention_mask"], err_msg=name)
  assert (out["clip_ids"][out["clip_mask"] == 0] == clip.convert_tokens_to_ids("!")).all()


def test_caption_tokenizer_fixed_lengths_match_transformers(tokenizer_dirs, caplog):
  tokenize = _caption_tokenizer(tokenizer_dirs)
  clip, roberta = _hf_tokenizers(*tokenizer_dirs)
  _check_fixed_lengths(tokenize, clip, roberta)
  # Truncations are counted per tokenizer, and logged at the 1st, 10th, 100th, ...
  full = [len(roberta(s)["input_ids"]) for s in SENTENCES]
  assert tokenize.truncated_counts() == {
      "captions": len(SENTENCES), "clip": 1, "roberta": sum(n > ROBERTA_LENGTH for n in full)}
  for _ in range(10):
    tokenize(SENTENCES[5])
  logged = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
  assert sum(m.startswith("roberta tokenizer: 1 of ") for m in logged) == 1
  assert sum(m.startswith("roberta tokenizer: 10 of ") for m in logged) == 1
  assert sum(m.startswith("clip tokenizer: 10 of ") for m in logged) == 1
  assert len(logged) == 4


def test_caption_tokenizer_from_a_converted_backbone(tokenizer_dirs, tmp_path):
  """from_backbone reads tokenizers/clip and tokenizers/roberta as the converter writes them
  (here a backbone of tokenizers only); transformers reads the same files."""
  modelscope = tmp_path / "modelscope"
  shutil.copytree(tokenizer_dirs[0], modelscope / "tokenizer")
  out = tmp_path / "backbone"
  backbone.convert_backbone({"modelscope": str(modelscope), "roberta": str(tokenizer_dirs[1])},
                            out, towers_to_convert={})
  tokenize = vt.CaptionTokenizer.from_backbone(out, clip_max_length=77,
                                               roberta_max_length=ROBERTA_LENGTH)
  _check_fixed_lengths(tokenize, *_hf_tokenizers(out / "tokenizers" / "clip",
                                                 out / "tokenizers" / "roberta"))


def test_caption_tokenizer_pickles(tokenizer_dirs):
  tokenize = _caption_tokenizer(tokenizer_dirs)
  copy = pickle.loads(pickle.dumps(tokenize))
  for caption in SENTENCES:
    want, got = tokenize(caption), copy(caption)
    assert want.keys() == got.keys() == {"clip_ids", "clip_mask", "roberta_ids", "roberta_mask"}
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_fixed_padding_keeps_roberta_states_of_real_tokens(tokenizer_dirs):
  """RoBERTa's hidden states of the real tokens are the same padded to the longest caption
  (the original) or to the fixed length, and equal transformers' RobertaModel's."""
  vocab = len(vt.roberta_tokenizer(tokenizer_dirs[1]).backend.get_vocab())
  config = transformers.RobertaConfig(
      vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=48, max_position_embeddings=ROBERTA_LENGTH + 2, pad_token_id=1,
      bos_token_id=0, eos_token_id=2)
  torch_model = parity.randomized(transformers.RobertaModel(config), 0.5)
  model = convert.roberta_from_transformers(torch_model)
  run = nnx.jit(lambda m, ids, mask: m(ids, mask)[0])
  longest_ids, longest_mask = vt.roberta_tokenizer(tokenizer_dirs[1])(CAPTIONS)
  fixed = _stack([_caption_tokenizer(tokenizer_dirs)(c) for c in CAPTIONS])
  assert longest_ids.shape[1] < ROBERTA_LENGTH
  np.testing.assert_array_equal(fixed["roberta_mask"].sum(1), longest_mask.sum(1))
  longest = np.asarray(run(model, longest_ids, longest_mask))
  padded = np.asarray(run(model, fixed["roberta_ids"], fixed["roberta_mask"]))
  with torch.no_grad():
    reference = torch_model(torch.from_numpy(fixed["roberta_ids"]).long(),
                            attention_mask=torch.from_numpy(fixed["roberta_mask"]).long())
  reference = reference.last_hidden_state.numpy()
  for row, n in enumerate(longest_mask.sum(1)):
    np.testing.assert_allclose(padded[row, :n], longest[row, :n], rtol=0, atol=1e-5)
    parity.assert_close(padded[row, :n], reference[row, :n])
