"""Text encoders: the offline MiniLM default, and word-piece merging on a tiny random BERT
checked against a per-sample reference loop (no network)."""
from __future__ import annotations

import pytest
import torch

from medalign_lite.models.features import TextFeatures
from medalign_lite.models.loading import ModelNotAvailable
from medalign_lite.models.text import TextConfig, build_text_encoder

# A small WordPiece vocabulary: "pleural", "effusion", "lungs", "opacity" only exist as pieces.
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "heart", "is", "normal", "no", "left", "small",
         "clear", "lung", ".", ",", "pl", "##eur", "##al", "eff", "##usion", "##s", "op", "##ac", "##ity", "and"]
TINY_BERT = {"model_type": "bert", "vocab_size": len(VOCAB), "hidden_size": 32, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
TEXTS = ["Small left pleural effusion, and opacity.", "The heart is normal.",
         "No effusion; lungs clear", "pleural pleural pleural effusion effusion opacity lungs lungs"]


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory):
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert_tok")
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(str(folder))
    return str(folder)


def _tiny(tok_dir, **kw) -> object:
    cfg = TextConfig(name="tiny-bert", tokenizer=tok_dir, pretrained=False, hf_config=TINY_BERT, **kw)
    return build_text_encoder(cfg).eval()


def _reference(enc, texts, merge: str, drop_special: bool):
    """Per-sample loop: group sub-token vectors by the tokenizer's word ids."""
    tok = enc.tokenizer(texts, padding=True, truncation=True, max_length=enc.cfg.max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = enc.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
    out = []
    for b in range(len(texts)):
        groups: dict = {}
        for t, w in enumerate(tok.word_ids(b)):
            if not tok["attention_mask"][b, t]:
                continue
            if w is None:
                if drop_special:
                    continue
                w = ("special", t)
            groups.setdefault(w, []).append(hidden[b, t])
        vecs = [torch.stack(v).sum(0) if merge == "sum" else torch.stack(v).mean(0) for v in groups.values()]
        out.append(torch.stack(vecs))
    return out


@pytest.mark.parametrize("merge", ["sum", "mean"])
@pytest.mark.parametrize("drop_special", [True, False])
def test_merge_matches_reference_loop(tiny_tokenizer_dir, merge, drop_special):
    enc = _tiny(tiny_tokenizer_dir, merge=merge, drop_special=drop_special)
    tok = enc.tokenize(TEXTS)
    with torch.no_grad():
        f = enc(tok["input_ids"], tok["attention_mask"], word_ids=tok["word_ids"], words=tok["words"])
    assert isinstance(f, TextFeatures)
    ref = _reference(enc, TEXTS, merge, drop_special)
    assert f.tokens.shape == (len(TEXTS), max(len(r) for r in ref), 32)
    for b, r in enumerate(ref):
        n = len(r)
        assert f.mask[b].sum() == n and f.mask[b, :n].all()
        torch.testing.assert_close(f.tokens[b, :n], r)
        assert (f.tokens[b, n:] == 0).all()
        assert len(f.words[b]) == n
    if drop_special:
        assert f.words[0] == ["Small", "left", "pleural", "effusion", ",", "and", "opacity", "."]
    else:
        assert f.words[1][0] == "[CLS]" and f.words[1][-1] == "[SEP]"
    # the vectorised WordPiece fallback (no word_ids passed) gives the same words
    with torch.no_grad():
        g = enc(tok["input_ids"], tok["attention_mask"])
    torch.testing.assert_close(g.tokens, f.tokens)
    assert torch.equal(g.mask, f.mask)


def test_tokenize_pads_truncates_and_masks_specials(tiny_tokenizer_dir):
    enc = _tiny(tiny_tokenizer_dir, max_length=6, merge_wordpieces=False)
    tok = enc.tokenize(TEXTS)
    assert tok["input_ids"].shape == (4, 6) and "word_ids" not in tok
    short = enc.tokenize(["the heart", "no"])
    assert short["input_ids"].shape == (2, 4)  # padded to the batch's longest, not max_length
    assert short["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    with torch.no_grad():
        f = enc(short["input_ids"], short["attention_mask"])
    assert f.tokens.shape == (2, 4, 32)
    assert f.mask.tolist() == [[False, True, True, False], [False, True, False, False]]


@pytest.mark.parametrize("kw", [{}, {"drop_special": False, "max_length": 7}, {"merge_wordpieces": False}])
def test_tokenize_remembers_each_text_and_pads_as_the_tokenizer(tiny_tokenizer_dir, monkeypatch, kw):
    """Each text is tokenised once; every batch (texts seen before, new ones, repeats within a
    batch, an empty text, truncated ones) equals the tokenizer's own padded batch."""
    import random

    enc = _tiny(tiny_tokenizer_dir, **kw)
    calls = []
    real = enc._tokenize
    monkeypatch.setattr(enc, "_tokenize", lambda texts: calls.append(list(texts)) or real(texts))
    pool = [*TEXTS, "", "the heart is clear", "lungs"]
    rng = random.Random(0)
    for batch in [pool[:3], pool[2:], [pool[0]] * 3, *[rng.choices(pool, k=rng.randint(1, 6)) for _ in range(12)]]:
        got, want = enc.tokenize(batch), real(batch)
        assert set(got) == set(want)
        for k, v in want.items():
            assert (torch.equal(got[k], v) and got[k].dtype == v.dtype) if torch.is_tensor(v) else got[k] == v, k
    assert sorted(t for c in calls for t in c) == sorted(pool)  # one tokenisation per distinct text
    monkeypatch.setattr(enc, "TOKENIZE_MEMO", 2)  # a bounded memo still gives the same batches
    enc._tokenized.clear()
    assert enc.tokenize(pool)["input_ids"].tolist() == real(pool)["input_ids"].tolist() and len(enc._tokenized) == 2


def test_pooling_and_layer_sum(tiny_tokenizer_dir):
    tok = None
    for pooling in ("cls", "mean"):
        enc = _tiny(tiny_tokenizer_dir, pooling=pooling, last_n_layers=2)
        tok = enc.tokenize(TEXTS)
        with torch.no_grad():
            f = enc(tok["input_ids"], tok["attention_mask"], tok["word_ids"])
            hs = enc.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                           output_hidden_states=True).hidden_states
        h = hs[-1] + hs[-2]
        if pooling == "cls":
            torch.testing.assert_close(f.pooled, h[:, 0])
        else:
            for b in range(len(TEXTS)):
                n = int(tok["attention_mask"][b].sum())
                torch.testing.assert_close(f.pooled[b], h[b, :n].mean(0))


def test_gradients_reach_the_encoder(tiny_tokenizer_dir):
    enc = _tiny(tiny_tokenizer_dir).train()
    f = enc.encode(TEXTS)
    (f.tokens[f.mask].square().mean() + f.pooled.square().mean()).backward()
    grads = [p.grad for n, p in enc.named_parameters() if "word_embeddings" in n]
    assert grads and grads[0].abs().sum() > 0
    assert getattr(enc.model, "pooler", None) is None  # unused pooler removed


def test_minilm_default_offline_real_embeddings():
    from safetensors.torch import load_file

    from medalign_lite.models.loading import minilm_path

    enc = build_text_encoder()  # TextConfig() → "minilm", offline
    assert enc.dim == 384
    real = load_file(f"{minilm_path()}/model.safetensors")
    key = next(k for k in real if k.endswith("word_embeddings.weight"))
    torch.testing.assert_close(enc.model.embeddings.word_embeddings.weight, real[key])
    with torch.no_grad():
        f = enc.encode(["There is a small left pleural effusion.",
                        "Small effusion in the left pleural space.",
                        "The patient has a fractured wrist."])
    p = torch.nn.functional.normalize(f.pooled, dim=-1)
    sim = p @ p.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
    assert f.words[0] == ["There", "is", "a", "small", "left", "pleural", "effusion", "."]


def test_building_minilm_draws_no_progress_bar(monkeypatch, bars):
    """Under papermill (TQDM_DISABLE unset) the 87 MiB MiniLM load drew a "Loading weights" bar."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    from medalign_lite.models import loading

    build_text_encoder()
    assert bars == []
    assert hf_logging.is_progress_bar_enabled() and not hub_utils.are_progress_bars_disabled()
    monkeypatch.setattr(loading, "SMALL_CHECKPOINT_BYTES", 1)  # a "big" encoder keeps its bar
    build_text_encoder()
    assert "Loading weights" in bars


def test_missing_model_is_one_clear_line():
    with pytest.raises(ModelNotAvailable) as err:
        build_text_encoder(TextConfig(name="medalign-test-org/no-such-bert"))
    assert "medalign-test-org/no-such-bert" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="pretrained=False"):
        TextConfig(hf_config=TINY_BERT)


def test_feature_cache_equals_uncached_and_encodes_each_row_once(tiny_tokenizer_dir):
    enc = _tiny(tiny_tokenizer_dir).requires_grad_(False)
    tok = enc.tokenize(TEXTS)
    args = (tok["input_ids"], tok["attention_mask"], tok["word_ids"])
    with torch.no_grad():
        ref = enc(*args)
    calls = []
    enc.model.register_forward_hook(lambda m, i, o: calls.append(i))
    enc.cache_features().train()  # cached features are the eval-mode ones even in train mode
    first = enc(*args)
    # rows in another order, one of them twice, padded to a different length: only cache hits
    sub = enc.tokenize([TEXTS[2], TEXTS[0], TEXTS[2]])
    again = enc(sub["input_ids"], sub["attention_mask"], sub["word_ids"])
    assert len(calls) == 1
    for f in (first,):
        torch.testing.assert_close(f.pooled, ref.pooled)
        torch.testing.assert_close(f.tokens[f.mask], ref.tokens[ref.mask])
        torch.testing.assert_close(f.mask, ref.mask)
    torch.testing.assert_close(again.pooled, ref.pooled[[2, 0, 2]])
    for row, b in enumerate([2, 0, 2]):
        torch.testing.assert_close(again.tokens[row][again.mask[row]], ref.tokens[b][ref.mask[b]])
    assert enc.model.training  # the caller's mode is restored


def test_feature_cache_refuses_a_trainable_encoder(tiny_tokenizer_dir):
    enc = _tiny(tiny_tokenizer_dir).cache_features()
    tok = enc.tokenize(TEXTS)
    with pytest.raises(RuntimeError, match="frozen"):
        enc(tok["input_ids"], tok["attention_mask"], tok["word_ids"])


def test_feature_cache_travels_as_tensors_and_keeps_the_rows_it_holds(tiny_tokenizer_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    src = _tiny(tiny_tokenizer_dir).requires_grad_(False).cache_features()
    assert src.cache_state() == {} and src.cached_rows == 0
    ref = src.encode(TEXTS[:2])
    assert src.cache_state(since=1)["key_lengths"].numel() == 1 and src.cache_state(since=2) == {}
    save_file(src.cache_state(), str(tmp_path / "f.safetensors"))
    dst = _tiny(tiny_tokenizer_dir).requires_grad_(False)
    mine = dst.cache_features().encode(TEXTS[1:2])
    (key, (pooled, tokens)), = dst._cache.items()
    dst._cache[key] = (pooled + 1, tokens)  # marked: a row it holds already must stay its own
    assert dst.load_cache_state(load_file(str(tmp_path / "f.safetensors"))) == 1 and dst.cached_rows == 2
    calls = []
    dst.model.register_forward_hook(lambda m, i, o: calls.append(i))
    got = dst.encode(TEXTS[:2])
    assert not calls  # both rows from the cache
    torch.testing.assert_close(got.pooled[0], ref.pooled[0])
    torch.testing.assert_close(got.tokens[0][got.mask[0]], ref.tokens[0][ref.mask[0]])
    torch.testing.assert_close(got.pooled[1], mine.pooled[0] + 1)


def test_cached_features_do_not_depend_on_the_rows_encoded_beside_them():
    """A report's cached features are the same bit for bit whoever encoded it first: in a batch
    of 16, one at a time or in threes (MiniLM, real weights). When each sub-batch was trimmed to
    its longest row, these differed in float rounding (and a GLoRIA run read other features beside
    ConVIRT than alone, from its second epoch on)."""
    texts = [f"The heart is {s}. {o} in the {side} {zone}. No pneumothorax."
             for s in ("normal", "enlarged", "mildly enlarged", "borderline")
             for o in ("Patchy opacity", "A small effusion", "Atelectasis", "A nodule")
             for side, zone in (("left", "base"), ("right", "upper zone"))][:24]
    texts += [t + " Degenerative changes of the thoracic spine are noted, with small osteophytes." for t in texts[:8]]

    def encoded(groups):
        enc = build_text_encoder().requires_grad_(False).cache_features()
        for g in groups:
            enc.encode(g)
        return enc._cache

    ref = encoded([texts[i:i + 16] for i in range(0, len(texts), 16)])
    for groups in ([[t] for t in texts], [texts[i:i + 3] for i in range(0, len(texts), 3)]):
        other = encoded(groups)
        assert other.keys() == ref.keys()
        for k in ref:
            assert torch.equal(other[k][0], ref[k][0]) and torch.equal(other[k][1], ref[k][1])
