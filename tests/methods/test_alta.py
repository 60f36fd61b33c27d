"""ALTA: zero-initialised adapters leave the frozen encoders' outputs exactly as they were; the
trainable set is exactly the official groups and training leaves every other weight bit-identical;
masking keeps a quarter of each view and the MIM loss counts masked patches only; a missing
view is the missing-view map; the four-view batched forward equals a per-view, per-study
reference loop; inference reads the unmasked current frontal alone; the MAE pieces agree with
transformers' own (patchify, norm-pix loss, encoder); an MAE-repository checkpoint converts
onto transformers' layout (checked against timm's ViT)."""
from __future__ import annotations

import copy
import fnmatch

import pytest
import torch
import torch.nn.functional as F

from medalign_lite.data.dataset import Batch
from medalign_lite.methods.alta import (
    ALTA,
    VIEWS,
    ALTAConfig,
    ALTAVision,
    build_alta,
    group_of,
    insert_adapters,
    masked_patch_mse,
    mlm_mask,
    parameter_table,
    patchify,
    trainable_groups,
    unpatchify,
)
from medalign_lite.methods.baselines import gloria_local_loss
from medalign_lite.models.mae import build_mae, convert_mae_checkpoint
from medalign_lite.models.text import TextConfig, build_text_encoder
from medalign_lite.models.vision import VisionConfig
from medalign_lite.nn import l2norm, mean_pairwise_cosine

from . import fakes

#: 16 px images, 4 px patches: L = 16 patches, a quarter (4) visible at ratio 0.75.
TINY_MAE = {**fakes.TINY_MAE, "hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64,
            "decoder_hidden_size": 16, "decoder_intermediate_size": 32, "layer_norm_eps": 1e-6}
TINY_BERT = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 24, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 48, "max_position_embeddings": 64,
             "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
TEXTS = ["Small left pleural effusion.", "The heart is normal in size. No effusion.",
         "Mild cardiomegaly with bibasal atelectasis.", "Lungs are clear."]
L = 16


def tiny_mae(**kw):
    return build_mae(VisionConfig(name="vit_mae", image_size=16, hf_config={**TINY_MAE, **kw}))


def tiny_text(**kw):
    cfg = TextConfig(name="tiny-bert", tokenizer="minilm", pretrained=False, hf_config=TINY_BERT, max_length=24,
                     pooling="cls", **kw)
    return build_text_encoder(cfg)


def tiny_alta(**kw) -> ALTA:
    torch.manual_seed(0)
    model = ALTA(tiny_mae(), tiny_text(), ALTAConfig(embed_dim=8, **kw))
    patterns = ALTA.trainable_patterns(kw)
    for n, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(n, pat) for pat in patterns))
    return model


def make_batch(model, n=4, missing=(), seed=1) -> Batch:
    """n studies with all four views; ``missing``: (study, view name) pairs marked absent."""
    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.randn(n, 1, 16, 16, generator=g)
    tok = model.tokenize(TEXTS[:n] if n <= len(TEXTS) else (TEXTS * n)[:n])
    b = Batch(images=img(), texts=TEXTS[:n], study_ids=[str(i) for i in range(n)], labels=torch.zeros(n, 14),
              input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], word_ids=tok.get("word_ids"))
    for v in ("lateral", "prior_frontal", "prior_lateral"):
        present = torch.ones(n, dtype=torch.bool)
        for s, name in missing:
            if name == v:
                present[s] = False
        x = img() * present[:, None, None, None]  # a missing view is zeros, as Collate makes it
        setattr(b, v, x)
        setattr(b, f"{v}_present", present)
    return b


def perturb_adapters(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".adapter.up." in n:
                p.normal_(0, 0.5)


# --- §1 adapters -----------------------------------------------------------------------------
def test_zero_initialised_adapters_give_exactly_the_frozen_encoders_outputs():
    import timm

    x = torch.randn(3, 1, 16, 16)
    # the MAE encoder, read through ALTAVision (unmasked and masked)
    mae = tiny_mae()
    plain, adapted = ALTAVision(copy.deepcopy(mae)), ALTAVision(mae)
    insert_adapters(adapted.mae, 32, skip_names=("decoder",))
    zero = torch.zeros(3, dtype=torch.long)
    noise = torch.rand(3, L)
    for masked in (False, True):
        a = plain.encode_views(x, zero, zero, masked=masked, noise=noise).hidden
        b = adapted.encode_views(x, zero, zero, masked=masked, noise=noise).hidden
        assert torch.equal(a, b)
    # the text encoder (post-LN BERT)
    text = tiny_text().eval()
    ref = copy.deepcopy(text)
    insert_adapters(text.model, 24)
    tok = text.tokenize(TEXTS)
    fa, fb = ref(**{k: v for k, v in tok.items() if k in ("input_ids", "attention_mask", "word_ids")}), \
        text(**{k: v for k, v in tok.items() if k in ("input_ids", "attention_mask", "word_ids")})
    assert torch.equal(fa.pooled, fb.pooled) and torch.equal(fa.tokens, fb.tokens)
    # a timm ViT (pre-LN Block)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=32,
                                                            depth=2, num_heads=2, mlp_ratio=2.0, num_classes=0).eval()
    vit_ref = copy.deepcopy(vit)
    assert len(insert_adapters(vit, 32)) == 2
    assert torch.equal(vit.forward_features(x), vit_ref.forward_features(x))
    # ... and the adapters are in the computation: non-zero up-projections change every output
    for m in (adapted.mae, text.model, vit):
        perturb_adapters(m)
    assert not torch.allclose(adapted.encode_views(x, zero, zero, masked=False).hidden,
                              plain.encode_views(x, zero, zero, masked=False).hidden)
    assert not torch.allclose(text(tok["input_ids"], tok["attention_mask"]).pooled, fa.pooled)
    assert not torch.allclose(vit.forward_features(x), vit_ref.forward_features(x))


def test_adapter_placement_serial_on_attention_parallel_on_mlp():
    """x + A(Attn(LN x)) and x + MLP(LN x) + s·A(LN x) in a pre-LN block; BERT's post-LN layer:
    a = A_s(LN(Attn + x)), out = LN(MLP(a) + a) + s·A_p(a)."""
    vit = tiny_mae().vit
    insert_adapters(vit, 32, scale=0.5)
    perturb_adapters(vit)
    layer, h = vit.layers[0], torch.randn(2, 5, 32)
    attn, mlp = layer.attention, layer.mlp
    a = attn.module(layer.layernorm_before(h))[0]
    h1 = h + (a + attn.adapter.up(F.gelu(attn.adapter.down(a))))
    n = layer.layernorm_after(h1)
    want = h1 + mlp.module(n) + 0.5 * mlp.adapter.up(F.gelu(mlp.adapter.down(n)))
    assert torch.allclose(layer(h), want, atol=1e-6)
    bert = tiny_text().model.eval()
    insert_adapters(bert, 24, scale=0.5)
    perturb_adapters(bert)
    bl, x = bert.encoder.layer[0], torch.randn(2, 5, 24)
    att = bl.attention.module(x)[0]
    a = att + bl.attention.adapter.up(F.gelu(bl.attention.adapter.down(att)))
    out = bl.output.module(bl.intermediate(a), a) + 0.5 * bl.output.adapter.up(F.gelu(bl.output.adapter.down(a)))
    assert torch.allclose(bl(x), out, atol=1e-6)
    with pytest.raises(ValueError, match="already inserted"):
        insert_adapters(bert, 24)
    with pytest.raises(ValueError, match="no timm ViT, ViT-MAE or BERT block"):
        insert_adapters(torch.nn.Linear(3, 3), 3)


# --- §2 the trainable set ----------------------------------------------------------------------
def official_trainable(name: str, adapters: bool = True) -> bool:
    """The official code's substring rule (``util/trainable_params.py``), on our names: heads,
    norms, adapters, logit scales, CLS token, view/temporal embeddings, decoder input
    projection, mask token, pixel head, MLM head; plus the learned missing-view map (the issue)."""
    keys = ("_head", "img_global", "img_local", "txt_global", "txt_local", "norm", "Norm", "logit_scale",
            "cls_token", "temporal_embedding", "view_embedding", "decoder_embed", "mask_token", "decoder_pred",
            "missing_token") + ((".adapter.",) if adapters else ())
    return any(k in name for k in keys)


@pytest.mark.parametrize("options", [{}, {"adapters": False}, {"learn_missing_token": False}, {"use_mlm": False}])
def test_the_trainable_set_is_exactly_the_named_groups(options):
    from medalign_lite.train import Stage, freeze_for_stage

    model = tiny_alta(**options)
    freeze_for_stage(model, Stage(trainable=ALTA.trainable_patterns(options)))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    want = {n for n, _ in model.named_parameters() if official_trainable(n, options.get("adapters", True))}
    if not options.get("learn_missing_token", True):
        want.discard("image_encoder.missing_token")
    assert trained == want
    assert any(".adapter." in n for n in trained) == options.get("adapters", True)
    assert ("mlm_head.dense.weight" in trained) == options.get("use_mlm", True)
    frozen = {n for n, _ in model.named_parameters()} - trained
    # every transformer weight, the patch embedding, the decoder blocks, the word embeddings stay frozen
    for pat in ("image_encoder.mae.vit.layers.*.attention*.q_proj.weight", "image_encoder.mae.vit.layers.*mlp*fc1.weight",
                "image_encoder.mae.vit.embeddings.patch_embeddings.projection.weight",
                "image_encoder.mae.decoder.decoder_layers.0.*fc2.weight", "text_encoder.model.embeddings.word_embeddings.weight",
                "text_encoder.model.encoder.layer.1.*intermediate.dense.weight", "image_to_text.weight"):
        hits = [n for n in frozen if fnmatch.fnmatchcase(n, pat)]
        assert hits or (pat == "image_to_text.weight" and not options.get("use_mlm", True)), pat
    table = parameter_table(model)
    assert sum(r["trainable"] for r in table.values()) == sum(p.numel() for n, p in model.named_parameters()
                                                                if n in trained)
    assert set(trainable_groups(ALTAConfig(**options))) <= set(table)


def test_training_leaves_every_frozen_weight_bit_identical(tmp_path):
    from torch.utils.data import Dataset

    from medalign_lite.data.dataset import Collate
    from medalign_lite.train import Stage, TrainConfig, Trainer

    model = tiny_alta()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    class Studies(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            item = {"study_id": str(i), "text": TEXTS[i % 4], "labels": torch.zeros(14)}
            for v in ("frontal", "lateral", "prior_frontal", "prior_lateral"):
                if not (v == "prior_lateral" and i % 3 == 0):  # some studies lack a view
                    item[v] = torch.randn(1, 16, 16, generator=g)
            return item

    cfg = TrainConfig(output_dir=str(tmp_path), batch_size=4, log_every=1, max_grad_norm=None,
                      stages=[Stage(name="alta", epochs=2, lr=1e-2, trainable=ALTA.trainable_patterns({}),
                                    weight_decay=0.05, betas=(0.9, 0.95))])
    Trainer(model, Studies(), cfg, collate_fn=Collate(model.tokenize)).fit()
    patterns = ALTA.trainable_patterns({})
    moved = set()
    for n, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(n, pat) for pat in patterns):
            if not torch.equal(p.detach().cpu(), before[n]):
                moved.add(n)
        else:
            assert torch.equal(p.detach().cpu(), before[n]), f"frozen {n} changed"
    for group in ("image_encoder.mae.vit.layers.0.attention.adapter.up.weight",
                  "text_encoder.model.encoder.layer.0.output.adapter.up.weight", "img_global.dense_to_output.weight",
                  "image_encoder.view_embedding", "image_encoder.temporal_embedding", "image_encoder.missing_token",
                  "image_encoder.mae.decoder.decoder_pred.weight", "mlm_head.dense.weight", "logit_scale_global"):
        assert group in moved, group


# --- §3 views and masking ----------------------------------------------------------------------
def test_masking_keeps_a_quarter_of_each_view_and_mim_counts_only_masked_patches():
    model = tiny_alta().train()
    batch = make_batch(model)
    out = model(batch)
    mask = out["mim_mask"]
    assert mask.shape == (4, L) and (mask.sum(1) == L * 3 // 4).all()
    enc = model.image_encoder.encode_views(torch.randn(8, 1, 16, 16), torch.zeros(8, dtype=torch.long),
                                           torch.zeros(8, dtype=torch.long), masked=True)
    assert enc.hidden.shape[1] == 1 + L // 4 and (enc.mask.sum(1) == 12).all()
    # L_mim is the norm-pix MSE over the masked patches of the current frontal ...
    target = patchify(batch.images, 4)
    assert torch.allclose(out["loss_mim"], masked_patch_mse(out["mim_pred"], target, mask), atol=1e-6)
    # ... and only those: changing the prediction at visible patches changes nothing
    pred = out["mim_pred"].clone()
    base = masked_patch_mse(pred, target, mask)
    pred[mask == 0] += 7.0
    assert torch.equal(masked_patch_mse(pred, target, mask), base)
    pred[mask == 1] += 1.0
    assert not torch.equal(masked_patch_mse(pred, target, mask), base)


def test_mim_pieces_agree_with_transformers():
    mae = tiny_mae()
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(patchify(x, 4), mae.patchify(x))
    assert torch.equal(unpatchify(patchify(x, 4), 4, (4, 4), 1), x)
    full = mae(pixel_values=x, noise=torch.rand(3, L))  # transformers' MAE loss on its own prediction
    assert torch.allclose(masked_patch_mse(full.logits, patchify(x, 4), full.mask), full.loss, atol=1e-6)
    # our driving of the encoder is transformers' own ViTMAEModel when view embeddings are zero
    vis = ALTAVision(mae)
    noise = torch.rand(3, L)
    zero = torch.zeros(3, dtype=torch.long)
    ours = vis.encode_views(x, zero, zero, masked=True, noise=noise)
    theirs = mae.vit(pixel_values=x, noise=noise)
    assert torch.allclose(ours.hidden, theirs.last_hidden_state, atol=1e-6)
    assert torch.equal(ours.ids_restore, theirs.ids_restore)
    # the 2x-resolution target of MRM: a fresh pixel head and 8 px target patches
    vis2 = ALTAVision(tiny_mae(), recon_scale=2)
    assert vis2.mae.decoder.decoder_pred.out_features == 64
    assert vis2.pixel_targets(torch.randn(2, 1, 32, 32)).shape == (2, L, 64)
    rec = vis2.reconstruct(torch.randn(2, 1, 32, 32))
    assert rec["reconstruction"].shape == (2, 1, 32, 32) and rec["mask"].shape == (2, L)


def _reference_hidden(model, batch, noise):
    """Per study, per view: the MAE's pieces one image at a time."""
    vis = model.image_encoder
    emb = vis.mae.vit.embeddings
    names = model.config.views
    rows = []
    for b in range(len(batch)):
        per_view = []
        for v, name in enumerate(names):
            x = batch.images[b:b + 1] if name == "frontal" else getattr(batch, name)[b:b + 1]
            present = True if name == "frontal" else bool(getattr(batch, f"{name}_present")[b])
            tok = emb.patch_embeddings(x) if present else vis.missing_token[None]
            tok = tok + emb.position_embeddings[:, 1:]
            tok, _, _ = emb.random_masking(tok, noise[b * len(names) + v][None])
            h = torch.cat([emb.cls_token + emb.position_embeddings[:, :1], tok], 1)
            vi, ti = VIEWS[name]
            h = h + vis.view_embedding[vi] + vis.temporal_embedding[ti]
            for layer in vis.mae.vit.layers:
                h = layer(h)
            per_view.append(vis.mae.vit.layernorm(h)[0])
        rows.append(torch.stack(per_view))
    return torch.stack(rows)                                                  # (B, V, 1 + K, D)


def test_four_view_batched_forward_equals_a_per_view_reference():
    model = tiny_alta(use_mlm=False).eval()
    with torch.no_grad():  # distinct view / time embeddings and missing map, so that mixing them up shows
        model.image_encoder.view_embedding.normal_()
        model.image_encoder.temporal_embedding.normal_()
        model.image_encoder.missing_token.normal_()
        perturb_adapters(model)
    batch = make_batch(model, missing=((1, "lateral"), (2, "prior_frontal"), (2, "prior_lateral")))
    noise = torch.rand(4 * 4, L)
    with torch.no_grad():
        out = model(batch, noise=noise)
        ref = _reference_hidden(model, batch, noise)
        vis = model.image_encoder
        enc = vis.encode_views(model.stack_views(batch)[0].flatten(0, 1), model.view_ids.repeat(4),
                               model.time_ids.repeat(4), model.stack_views(batch)[1].flatten(), True, noise)
        assert torch.allclose(enc.hidden.unflatten(0, (4, 4)), ref, atol=1e-5)
        # the losses from the reference's pieces
        txt = model.text_encoder(batch.input_ids, batch.attention_mask, word_ids=batch.word_ids)
        gi = l2norm(model.img_global(ref[:, :, 0].mean(1)))
        gt = l2norm(model.txt_global(txt.pooled))
        s_g, s_l = model.scales()
        terms = []
        for i in range(4):  # plain per-row InfoNCE, both directions
            terms.append(-F.log_softmax(s_g * gi[i] @ gt.T, 0)[i] - F.log_softmax(s_g * gt[i] @ gi.T, 0)[i])
        assert torch.allclose(out["loss_global"], torch.stack(terms).mean() / 2, atol=1e-5)
        li, lt = gloria_local_loss(model.txt_local(txt.tokens), txt.mask, model.img_local(ref[:, :, 1:].flatten(1, 2)),
                                   s_l[0], s_l[1], s_l[2])
        assert torch.allclose(out["loss_local"], (li + lt) / 2, atol=1e-5)
        mim = masked_patch_mse(vis.decode(ref[:, 0], enc.ids_restore.unflatten(0, (4, 4))[:, 0]),
                               patchify(batch.images, 4), enc.mask.unflatten(0, (4, 4))[:, 0])
        assert torch.allclose(out["loss_mim"], mim, atol=1e-5)


def test_mean_pooling_reads_the_visible_patches_in_training_and_every_patch_at_inference():
    model = tiny_alta(image_pooling="mean", use_local=False, use_mim=False, use_mlm=False).eval()
    with torch.no_grad():
        model.image_encoder.view_embedding.normal_()
        perturb_adapters(model)
    batch = make_batch(model)
    noise = torch.rand(4 * 4, L)
    with torch.no_grad():
        out = model(batch, noise=noise)
        ref = _reference_hidden(model, batch, noise)                  # (B, V, 1 + K, D), K = L/4 visible
        assert ref.shape[2] == 1 + L // 4
        txt = model.text_encoder(batch.input_ids, batch.attention_mask, word_ids=batch.word_ids)
        gi = l2norm(model.img_global(ref[:, :, 1:].mean(2).mean(1)))   # views' visible-patch means, averaged
        gt = l2norm(model.txt_global(txt.pooled))
        s_g = model.scales()[0]
        terms = [-F.log_softmax(s_g * gi[i] @ gt.T, 0)[i] - F.log_softmax(s_g * gt[i] @ gi.T, 0)[i] for i in range(4)]
        assert torch.allclose(out["loss_global"], torch.stack(terms).mean() / 2, atol=1e-5)
        for key, z in (("cos_image", gi), ("cos_text", gt)):  # the collapse monitor, pair by pair
            pairs = [z[i] @ z[j] for i in range(4) for j in range(4) if i != j]
            assert torch.allclose(out[key], torch.stack(pairs).mean(), atol=1e-5)
        cls = tiny_alta(use_local=False, use_mim=False, use_mlm=False).eval()
        cls.load_state_dict(model.state_dict())
        assert not torch.allclose(cls(batch, noise=noise)["loss_global"], out["loss_global"])  # the CLS differs
        # inference: the mean of all L patches of the unmasked current frontal
        zero = torch.zeros(4, dtype=torch.long)
        h = model.image_encoder.encode_views(batch.images, zero, zero, masked=False).hidden
        assert h.shape[1] == 1 + L
        assert torch.allclose(model.encode_image(batch.images), l2norm(model.img_global(h[:, 1:].mean(1))), atol=1e-6)


def test_a_missing_view_uses_the_missing_view_token():
    model = tiny_alta(use_mlm=False).eval()
    batch = make_batch(model, missing=((0, "lateral"),))
    noise = torch.rand(16, L)
    with torch.no_grad():
        a = model(batch, noise=noise)
        other = copy.copy(batch)
        other.lateral = batch.lateral.clone()
        other.lateral[0] = torch.randn(1, 16, 16) * 5  # whatever sits in a missing slot is never read
        b = model(other, noise=noise)
        assert torch.equal(a["loss"], b["loss"])
        model.image_encoder.missing_token.normal_()  # ... the missing-view map is (a constant shift
        c = model(batch, noise=noise)                 # would vanish in the LayerNorms)
        assert not torch.equal(a["loss"], c["loss"])
        full = make_batch(model)  # all present: the map is not used at all
        d1 = model(full, noise=noise)
        model.image_encoder.missing_token.normal_()
        assert torch.equal(model(full, noise=noise)["loss"], d1["loss"])
    assert a["view_present"][0].tolist() == [True, False, True, True]
    # a view the batch does not hold at all counts as missing for every study
    none = make_batch(model)
    none.prior_lateral = none.prior_lateral_present = None
    assert model.stack_views(none)[1][:, 3].tolist() == [False] * 4


def test_inference_ignores_masking_and_extra_views():
    model = tiny_alta().train()
    batch = make_batch(model)
    e1 = model.encode_image(batch.images)
    e2 = model.encode_image(batch.images)
    assert torch.equal(e1, e2)  # no random masking at inference, even in training mode
    with torch.no_grad():
        model.image_encoder.view_embedding[1].normal_()
        model.image_encoder.temporal_embedding[1].normal_()
        model.image_encoder.missing_token.normal_()
    assert torch.equal(model.encode_image(batch.images), e1)  # lateral, prior, missing: unused
    with torch.no_grad():
        model.image_encoder.view_embedding[0].add_(1.0)   # the frontal's, current time's embedding is used
    assert not torch.allclose(model.encode_image(batch.images), e1)
    feats = model.image_encoder(batch.images)
    assert feats.patches.shape == (4, L, 32) and feats.grid == (4, 4)
    t = model.encode_text(batch.input_ids, batch.attention_mask)
    assert t.shape == (4, 8) and torch.allclose(t.norm(dim=-1), torch.ones(4))


# --- §4 MLM, the frontal-only and unmasked variants, gradients --------------------------------
def test_mlm_masks_only_words_and_is_image_conditioned():
    model = tiny_alta().train()
    tok = model.text_encoder.tokenizer
    batch = make_batch(model)
    ids, am = batch.input_ids.repeat(50, 1), batch.attention_mask.repeat(50, 1)
    masked, labels = mlm_mask(ids, am, model.text_encoder.special_ids, tok.mask_token_id, 0.5,
                              torch.Generator().manual_seed(0))
    sel = labels != -100
    words = am.bool() & ~torch.isin(ids, model.text_encoder.special_ids)
    assert not (sel & ~words).any() and (masked[sel] == tok.mask_token_id).all() and (masked[~sel] == ids[~sel]).all()
    assert abs(sel.sum() / words.sum() - 0.5) < 0.05
    # the image reaches the MLM loss (through the mean CLS added to the token embeddings) ...
    params = [p for n, p in model.named_parameters() if n.startswith("image_encoder.mae.vit.layers.0.attention.adapter")]
    torch.manual_seed(3)
    out = model(batch)
    g = torch.autograd.grad(out["loss"] - out["loss_mlm"] + out["loss_mlm"], params, allow_unused=True)
    assert any(x is not None and x.abs().sum() > 0 for x in g)
    torch.manual_seed(3)
    other = copy.copy(batch)
    other.images = batch.images + 1.0
    torch.manual_seed(3)
    a = model(batch)["loss_mlm"]
    torch.manual_seed(3)
    b = model(other)["loss_mlm"]
    assert not torch.equal(a, b)
    # ... and the hook is gone afterwards: the plain text path is unchanged
    f1 = model.text_encoder(batch.input_ids, batch.attention_mask).pooled
    model.eval()
    assert torch.allclose(model.text_encoder(batch.input_ids, batch.attention_mask).pooled, f1)


def test_frontal_only_and_unmasked_variants():
    model = tiny_alta(views=("frontal",), use_mlm=False).train()
    out = model(make_batch(model))
    assert out["view_present"].shape == (4, 1) and torch.isfinite(out["loss"])
    # without masking during alignment the contrastive losses see every patch; MIM runs its own masked pass
    model = tiny_alta(mask_ratio=0.0, use_mlm=False).train()
    out = model(make_batch(model))
    assert out["attn"].shape[-1] == 4 * L and (out["mim_mask"].sum(1) == 12).all()
    with pytest.raises(ValueError, match="start with 'frontal'"):
        ALTAConfig(views=("lateral",))


def test_gradients_reach_the_trainable_set_of_both_encoders_only():
    model = tiny_alta().train()
    model(make_batch(model))["loss"].backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # zero-initialised up-projections: at the first step only W_up (and b_up) of an adapter has a gradient
    for n in ("image_encoder.mae.vit.layers.1.mlp.adapter.up.weight", "text_encoder.model.encoder.layer.0.attention.adapter.up.weight",
              "image_encoder.mae.decoder.decoder_embed.weight", "mlm_head.dense.weight", "logit_scale_local",
              "text_encoder.model.encoder.layer.1.output.module.LayerNorm.weight"):
        assert n in grads, n
    assert not any(p.grad is not None for n, p in model.named_parameters() if not p.requires_grad)


# --- the backbones ------------------------------------------------------------------------------
def test_an_mae_repository_checkpoint_converts_onto_transformers_layout(tmp_path):
    """timm's ViT is the MAE repository's encoder (same key names): its state dict, converted,
    gives the same unmasked encoder output in transformers' ViT-MAE."""
    import timm
    from safetensors.torch import save_file

    vit = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=32,
                                                            depth=2, num_heads=2, mlp_ratio=2.0, num_classes=0).eval()
    with torch.no_grad():
        vit.pos_embed.normal_(0, 0.1)
        vit.cls_token.normal_(0, 0.1)
    mae = tiny_mae()
    sd = {k: v for k, v in vit.state_dict().items()}
    sd.update({k: v for k, v in {"decoder_embed.weight": mae.decoder.decoder_embed.weight,
                                 "decoder_pred.weight": torch.zeros(64, 16)}.items()})
    converted = convert_mae_checkpoint(sd)
    assert "vit.layers.1.attention.v_proj.bias" in converted and "vit.layers.0.layernorm_after.weight" in converted
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "mae.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):  # a checkpoint missing most decoder weights
        build_mae(VisionConfig(name="vit_mae", pretrained=str(tmp_path / "mae.safetensors"), image_size=16,
                               hf_config=TINY_MAE))
    loaded = tiny_mae()
    missing, _ = loaded.load_state_dict({k: v for k, v in converted.items() if k.startswith("vit.")}, strict=False)
    assert not [k for k in missing if k.startswith("vit.")]
    x = torch.randn(2, 1, 16, 16)
    zero = torch.zeros(2, dtype=torch.long)
    ours = ALTAVision(loaded).encode_views(x, zero, zero, masked=False).hidden
    assert torch.allclose(ours, vit.forward_features(x), atol=1e-5)


def test_mae_folders_round_trip_and_bad_configs_are_clear(tmp_path):
    mae = tiny_mae()
    mae.save_pretrained(str(tmp_path / "m"))
    again = build_mae(VisionConfig(name="vit_mae", pretrained=str(tmp_path / "m"), image_size=16))
    assert all(torch.equal(a, b) for a, b in zip(mae.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="needs hf_config"):
        build_mae(VisionConfig(name="vit_mae", image_size=16))
    with pytest.raises(ValueError, match="model_type 'vit_mae'"):
        build_mae(VisionConfig(name="vit_mae", image_size=16, hf_config={"model_type": "vit"}))


def test_registry_and_recipe_layer_know_alta():
    from medalign_lite.experiments.contrastive import (
        default_trainable,
        recipe_from_config,
    )
    from medalign_lite.methods import get_method

    spec = get_method("alta")
    assert spec.module is ALTA and spec.dual_encoder
    assert default_trainable("alta", {"adapters": False}) == ALTA.trainable_patterns({"adapters": False})
    r = recipe_from_config("alta_tiny")
    assert r.method == "alta" and r.betas == (0.9, 0.95) and r.weight_decay == 0.05 and r.max_grad_norm is None
    full = recipe_from_config("alta_full")
    assert full.epochs == 30 and full.schedule_epochs == 100 and full.batch_size == 24


# --- efficiency ---------------------------------------------------------------------------------
def test_paper_scale_trainable_fraction_is_about_eight_percent():
    """MRM's ViT-B/16 with its 4-block 768-wide decoder and a BERT-base text encoder (shapes only):
    the official set is 6-10 % of the parameters; the adapters alone are 48 x ~296 k = 14.2 M."""
    from medalign_lite.bench import bench_alta

    res = bench_alta(steps=False)
    assert 0.06 <= res["trainable_fraction"] <= 0.10
    assert res["groups"]["adapters"]["trainable"] == 48 * (2 * 768 * 192 + 192 + 768)
    assert 230e6 < res["params"] < 250e6


def test_bench_alta_small_shapes_and_cli(tmp_path, capsys):
    import json

    import yaml

    from medalign_lite.bench import bench_alta
    from medalign_lite.cli import main

    cfg = tmp_path / "alta_small.yaml"
    cfg.write_text(yaml.safe_dump({"method": "alta", "model": {"embed_dim": 8},
                                   "vision": {"name": "vit_mae", "image_size": 16, "hf_config": TINY_MAE},
                                   "text": {"name": "minilm", "max_length": 12}}))
    res = bench_alta(2, tokens=8, config=str(cfg), text_hf_config=TINY_BERT, repeats=1)
    assert {"trainable_fraction", "trainable_params", "step_ratio", "memory_ratio"} <= set(res)
    # full fine-tuning trains every weight of the same model without its adapters
    assert res["alta_trainable_params"] == res["trainable_params"] < res["full_trainable_params"] < res["params"]
    assert res["params"] - res["full_trainable_params"] == res["groups"]["adapters"]["params"]
    assert res["step_ratio"] > 0 and res["alta_step_s"] > 0 and res["full_step_s"] > 0
    # counted arithmetic: masking 3/4 of the patches and freezing the backbones' weights cut it
    assert 0 < res["alta_gflop"] < res["full_gflop"] and res["flop_ratio"] == res["alta_gflop"] / res["full_gflop"]
    capsys.readouterr()
    assert main(["bench", "alta", "--no-steps", "--json", "--config", str(cfg)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].startswith("trainable:") and 0 < json.loads(lines[-1])["trainable_fraction"] < 1


def test_build_alta_and_build_vision_from_a_config():
    """The builders the experiments layer calls (a random MAE at the config's shape, MiniLM's
    tokenizer with a random BERT): an ALTA whose frozen set is the official one."""
    vision = ALTA.build_vision(VisionConfig(name="vit_mae", image_size=16, hf_config=TINY_MAE))
    assert type(vision).__name__ == "ViTMAEForPreTraining"
    # a YAML flow mapping (YAML 1.1 reads 1e-06 as a string: layer_norm_eps keeps its default)
    flow = lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items() if k != "layer_norm_eps") + "}"
    model = build_alta("alta_tiny", ["vision.pretrained=false", "vision.image_size=16", f"vision.hf_config={flow(TINY_MAE)}",
                                     "text.pretrained=false", "text.max_length=24", f"text.hf_config={flow(TINY_BERT)}"])
    assert isinstance(model, ALTA)
    groups = trainable_groups(model.config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if group_of(n, groups) is not None}
    assert "image_encoder.mae.vit.embeddings.patch_embeddings.projection.weight" not in trainable


def test_mean_pairwise_cosine_is_one_for_a_collapsed_batch_and_matches_the_pairs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g)
    u = F.normalize(x, dim=-1)
    ref = torch.stack([u[i] @ u[j] for i in range(7) for j in range(7) if i != j]).mean()
    assert torch.allclose(mean_pairwise_cosine(x), ref, atol=1e-6)
    assert torch.allclose(mean_pairwise_cosine(3 * x[:1].repeat(5, 1)), torch.tensor(1.0), atol=1e-6)
    assert torch.allclose(mean_pairwise_cosine(torch.eye(4)), torch.tensor(0.0))
    with pytest.raises(ValueError, match="at least 2 rows"):
        mean_pairwise_cosine(x[:1])
