"""Word-level report tokenizer: round trip, unknown words, padding, save/load, on-disk cache."""
from __future__ import annotations

import pytest

from medalign_lite.data.iu_xray import report_tokenizer
from medalign_lite.text import tokenizer as wt
from medalign_lite.text.tokenizer import (
    cached_word_tokenizer,
    load_word_tokenizer,
    save_word_tokenizer,
    train_word_tokenizer,
)

CORPUS = ["The heart is normal in size.", "The lungs are clear.", "No pleural effusion.",
          "Small left pleural effusion.", "The heart is enlarged.", "Lungs are clear, no effusion."]


@pytest.fixture(scope="module")
def tok():
    return train_word_tokenizer(CORPUS, vocab_size=100, min_frequency=2)


def test_special_tokens_and_bos(tok):
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    ids = tok("The heart is clear.")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert tok("the heart", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(w)
                                                                       for w in ("the", "heart")]
    assert tok("heart <eos>", add_special_tokens=False)["input_ids"][-1] == tok.eos_token_id


def test_round_trip_lowercases_and_splits_punctuation(tok):
    text = "The HEART is clear.No effusion."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "the heart is clear . no effusion ."


def test_unknown_and_rare_words_become_unk(tok):
    vocab = tok.get_vocab()
    assert "enlarged" not in vocab and "small" not in vocab  # seen once < min_frequency
    assert "effusion" in vocab and "pleural" in vocab
    ids = tok("Enlarged zzzqx heart", add_special_tokens=False)["input_ids"]
    assert ids == [tok.unk_token_id, tok.unk_token_id, vocab["heart"]]
    assert tok.decode(ids) == "<unk> <unk> heart"


def test_vocab_size_cap():
    small = train_word_tokenizer(CORPUS, vocab_size=8, min_frequency=1)
    assert len(small) == 8
    with pytest.raises(ValueError):
        train_word_tokenizer(CORPUS, vocab_size=4)


def test_padding_and_truncation(tok):
    batch = tok(["The heart is normal.", "Clear."], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 6)
    assert batch["input_ids"][1, 3:].tolist() == [tok.pad_token_id] * 3
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0]
    cut = tok(["The heart is normal in size."], truncation=True, max_length=4)["input_ids"][0]
    assert len(cut) == 4


def test_save_load_round_trip(tok, tmp_path):
    save_word_tokenizer(tok, tmp_path / "tok")
    again = load_word_tokenizer(tmp_path / "tok")
    for text in CORPUS + ["unseen words here"]:
        assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.pad_token == "<pad>" and again.padding_side == "right"
    with pytest.raises(FileNotFoundError):
        load_word_tokenizer(tmp_path / "missing")


def test_report_tokenizer_is_trained_once_and_cached(tmp_path, monkeypatch):
    first = report_tokenizer(tmp_path, vocab_size=3000)
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1 and folders[0].name.startswith("iu_words_v3000_f2_")
    vocab = first.get_vocab()
    assert 800 < len(first) < 3000  # min_frequency=2 leaves ~1.5k IU words
    assert {"effusion", "pneumothorax", "cardiomegaly", "xxxx"} <= set(vocab)

    def fail(*a, **k):
        raise AssertionError("retrained instead of reading the cache")

    monkeypatch.setattr(wt, "train_word_tokenizer", fail)
    second = report_tokenizer(tmp_path, vocab_size=3000)
    assert second.get_vocab() == vocab
    with pytest.raises(AssertionError, match="retrained"):
        report_tokenizer(tmp_path, vocab_size=500)  # another size is another cache entry


def test_cached_word_tokenizer_keys_on_the_corpus(tmp_path):
    first = cached_word_tokenizer(CORPUS, "tiny", tmp_path, vocab_size=100)
    (entry,) = tmp_path.iterdir()
    assert entry.name.startswith("tiny_v100_f2_")
    again = cached_word_tokenizer(CORPUS, "tiny", tmp_path, vocab_size=100)
    assert again.get_vocab() == first.get_vocab() and list(tmp_path.iterdir()) == [entry]
    cached_word_tokenizer(CORPUS[:-1], "tiny", tmp_path, vocab_size=100)  # another corpus, another entry
    assert len(list(tmp_path.iterdir())) == 2
