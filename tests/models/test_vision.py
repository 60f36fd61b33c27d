"""Image encoders: shapes per family, row-major patches, weight loading, gradients (random
weights only, no network)."""
from __future__ import annotations

import pytest
import torch

from medalign_lite.models.features import ImageFeatures
from medalign_lite.models.loading import ModelNotAvailable
from medalign_lite.models.vision import VisionConfig, build_image_encoder

TINY_DINO = {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 64, "patch_size": 14, "image_size": 56}


def _run(cfg: VisionConfig, batch: int = 1, grad: bool = False):
    enc = build_image_encoder(cfg)
    x = torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size)
    with torch.set_grad_enabled(grad):
        feats = enc(x)
    assert isinstance(feats, ImageFeatures)
    return enc, x, feats


def test_resnet50_gloria_shapes():
    enc, _, f = _run(VisionConfig("timm:resnet50", image_size=299))
    assert (enc.global_dim, enc.patch_dim) == (2048, 1024)
    assert f.grid == (19, 19)
    assert f.patches.shape == (1, 361, 1024)
    assert f.pooled.shape == (1, 2048)


def test_resnet18_and_other_stage():
    enc, _, f = _run(VisionConfig("timm:resnet18", in_chans=3), batch=2)
    assert f.patches.shape == (2, 196, 256) and f.pooled.shape == (2, 512) and f.grid == (14, 14)
    assert enc.backbone.conv1.weight.shape[1] == 3
    enc, _, f = _run(VisionConfig("timm:resnet18", local_stage="layer4"))
    assert f.patches.shape == (1, 49, 512) and enc.patch_dim == 512
    assert enc.backbone.conv1.weight.shape[1] == 1  # gray stem
    with pytest.raises(ValueError, match="local_stage"):
        build_image_encoder(VisionConfig("timm:resnet18", local_stage="layer9"))


def test_vit_small_drops_cls_and_pools_it():
    enc, x, f = _run(VisionConfig("timm:vit_small_patch16_224"))
    assert enc.family == "timm_vit" and enc.n_prefix == 1
    assert f.patches.shape == (1, 196, 384) and f.pooled.shape == (1, 384) and f.grid == (14, 14)
    with torch.no_grad():
        tokens = enc.backbone.forward_features(x)
    torch.testing.assert_close(f.pooled, tokens[:, 0])
    torch.testing.assert_close(f.patches, tokens[:, 1:])


def test_tiny_cnn_grid_size_and_row_major_patches():
    enc, x, f = _run(VisionConfig(), batch=2)
    n_params = sum(p.numel() for p in enc.parameters())
    assert 0.5e6 < n_params < 2e6
    assert f.grid == (14, 14) and f.patches.shape == (2, 196, 128) and f.pooled.shape == (2, 256)
    with torch.no_grad():
        _, fmap = enc.backbone(x, enc.local_index)  # (B, Dl, h, w)
    i, j = 3, 11
    torch.testing.assert_close(f.patches[:, i * 14 + j], fmap[:, :, i, j])
    _, _, f299 = _run(VisionConfig(image_size=299))
    assert f299.grid == (19, 19) and f299.patches.shape[1] == 361


def test_tiny_dinov2_through_the_hf_path():
    cfg = VisionConfig("hf:tiny-dinov2", hf_config=TINY_DINO, image_size=56)
    enc, x, f = _run(cfg, batch=2)
    assert type(enc.backbone).__name__ == "Dinov2Model" and enc.family == "hf"
    assert f.grid == (4, 4) and f.patches.shape == (2, 16, 32) and f.pooled.shape == (2, 32)
    with torch.no_grad():
        out = enc.backbone(pixel_values=x.expand(-1, 3, -1, -1))
    torch.testing.assert_close(f.pooled, out.pooler_output)
    torch.testing.assert_close(f.patches, out.last_hidden_state[:, 1:])
    keep = VisionConfig("hf:tiny-dinov2", hf_config=TINY_DINO, image_size=56, drop_cls=False)
    assert _run(keep)[2].patches.shape == (1, 17, 32)
    regs = dict(TINY_DINO, model_type="dinov2_with_registers", num_register_tokens=4)
    enc, _, f = _run(VisionConfig("hf:tiny-dinov2-reg", hf_config=regs, image_size=56))
    assert enc.n_prefix == 5 and f.patches.shape == (1, 16, 32)


def test_clip_vision_tower_of_a_two_tower_config():
    conf = {"model_type": "clip", "vision_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                      "intermediate_size": 64, "patch_size": 8, "image_size": 32}}
    enc, _, f = _run(VisionConfig("hf:tiny-clip", hf_config=conf, image_size=64))  # 64 px: interpolated
    assert type(enc.backbone).__name__ == "CLIPVisionModel" and enc.interpolate_pos
    assert f.grid == (8, 8) and f.patches.shape == (1, 64, 32)


def test_penultimate_layer_patches_as_llava_selects_them():
    conf = {"model_type": "clip", "vision_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                                      "intermediate_size": 64, "patch_size": 8, "image_size": 32}}
    enc, x, f = _run(VisionConfig("hf:tiny-clip", hf_config=conf, image_size=32, hidden_layer=-2))
    with torch.no_grad():
        out = enc.backbone(pixel_values=x.expand(-1, 3, -1, -1), output_hidden_states=True)
    torch.testing.assert_close(f.patches, out.hidden_states[-2][:, 1:])
    assert not torch.allclose(f.patches, out.last_hidden_state[:, 1:])
    with pytest.raises(ValueError, match="hidden_layer"):
        VisionConfig(hidden_layer=-2)


def test_gradients_flow_to_every_parameter():
    for cfg in (VisionConfig(image_size=64), VisionConfig("hf:tiny-dinov2", hf_config=TINY_DINO, image_size=56)):
        enc, _, f = _run(cfg, batch=2, grad=True)
        (f.pooled.square().mean() + f.patches.square().mean()).backward()
        missing = [n for n, p in enc.named_parameters()  # Dinov2's mask_token serves masked pretraining only
                   if "mask_token" not in n and (p.grad is None or not p.grad.abs().sum() > 0)]
        assert not missing, missing[:5]


def test_weights_from_local_files(tmp_path):
    from safetensors.torch import save_file

    # timm: a local safetensors file; the gray stem is the sum of the RGB filters
    src = build_image_encoder(VisionConfig("timm:resnet18", in_chans=3)).backbone
    save_file(src.state_dict(), tmp_path / "r18.safetensors")
    enc = build_image_encoder(VisionConfig("timm:resnet18", pretrained=str(tmp_path / "r18.safetensors")))
    torch.testing.assert_close(enc.backbone.conv1.weight[:, 0], src.conv1.weight.sum(1))
    torch.testing.assert_close(enc.backbone.layer3[0].conv1.weight, src.layer3[0].conv1.weight)
    # transformers: a saved local folder as the model name
    model = build_image_encoder(VisionConfig("hf:x", hf_config=TINY_DINO, image_size=56)).backbone
    model.save_pretrained(tmp_path / "dino")
    enc = build_image_encoder(VisionConfig(str(tmp_path / "dino"), pretrained=True, image_size=56))
    x = torch.randn(1, 1, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(enc(x).pooled, model(pixel_values=x.expand(-1, 3, -1, -1)).pooler_output)
    # tiny_cnn: a checkpoint of the encoder itself
    tiny = build_image_encoder(VisionConfig(image_size=64)).eval()
    save_file(tiny.state_dict(), tmp_path / "tiny.safetensors")
    again = build_image_encoder(VisionConfig(image_size=64, pretrained=str(tmp_path / "tiny.safetensors"))).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x).patches, tiny(x).patches)


def test_loading_a_tiny_local_vision_model_draws_no_progress_bar(tmp_path, monkeypatch, bars):
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    from medalign_lite.models import loading
    from medalign_lite.models.loading import quiet_hub_progress

    model = build_image_encoder(VisionConfig("hf:x", hf_config=TINY_DINO, image_size=56)).backbone
    with quiet_hub_progress(model):
        model.save_pretrained(tmp_path / "dino")
    cfg = VisionConfig(str(tmp_path / "dino"), pretrained=True, image_size=56)
    enc = build_image_encoder(cfg)
    assert bars == [] and type(enc.backbone).__name__ == "Dinov2Model"
    assert hf_logging.is_progress_bar_enabled() and not hub_utils.are_progress_bars_disabled()
    monkeypatch.setattr(loading, "SMALL_CHECKPOINT_BYTES", 1)  # a "big" tower keeps its bar
    build_image_encoder(cfg)
    assert "Loading weights" in bars


def test_explicit_errors():
    with pytest.raises(ModelNotAvailable, match="medalign-test-org/no-vision"):
        build_image_encoder(VisionConfig("hf:medalign-test-org/no-vision", pretrained=True))
    with pytest.raises(ModelNotAvailable):
        build_image_encoder(VisionConfig("tiny_cnn", pretrained=True))
    with pytest.raises(ValueError, match="Unknown vision encoder"):
        build_image_encoder(VisionConfig("resnet-ish"))
    with pytest.raises(ValueError, match="in_chans"):
        VisionConfig(in_chans=2)
    enc = build_image_encoder(VisionConfig(image_size=32))
    with pytest.raises(ValueError, match="expects images"):
        enc(torch.randn(1, 3, 32, 32))


def test_bf16_precision_gives_float32_features_close_to_fp32_and_auto_follows_the_cpu(monkeypatch):
    import medalign_lite.models.vision as V

    torch.manual_seed(0)
    fp32 = V.build_image_encoder(V.VisionConfig(name="tiny_cnn", image_size=64)).eval()
    bf16 = V.build_image_encoder(V.VisionConfig(name="tiny_cnn", image_size=64, precision="bf16")).eval()
    bf16.load_state_dict(fp32.state_dict())
    x = torch.randn(3, 1, 64, 64)
    a, b = fp32(x), bf16(x)
    assert b.pooled.dtype == torch.float32 and b.patches.dtype == torch.float32 and b.grid == a.grid
    assert not torch.equal(a.patches, b.patches)  # really computed in bfloat16
    cos = torch.nn.functional.cosine_similarity(a.patches.flatten(1), b.patches.flatten(1))
    assert (cos > 0.99).all()
    b.pooled.sum().backward()  # gradients reach the float32 weights
    assert bf16.backbone.stem[0].weight.grad is not None and bf16.backbone.stem[0].weight.dtype == torch.float32
    auto = V.build_image_encoder(V.VisionConfig(name="tiny_cnn", image_size=64, precision="auto")).eval()
    auto.load_state_dict(fp32.state_dict())
    monkeypatch.setattr(V, "cpu_has_native_bf16", lambda: False)
    assert torch.equal(auto(x).patches, a.patches)
    monkeypatch.setattr(V, "cpu_has_native_bf16", lambda: True)
    assert torch.equal(auto(x).patches, bf16(x).patches)
    with pytest.raises(ValueError, match="precision"):
        V.VisionConfig(precision="fp16")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_channels_last_stores_cnn_weights_nhwc_computes_the_same_features_and_saves_plain(precision, tmp_path):
    from medalign_lite.train.checkpoints import load_weights, save_weights

    torch.manual_seed(0)
    plain = build_image_encoder(VisionConfig(name="tiny_cnn", image_size=64, precision=precision)).eval()
    nhwc = build_image_encoder(VisionConfig(name="tiny_cnn", image_size=64, precision=precision,
                                            channels_last=True)).eval()
    nhwc.load_state_dict(plain.state_dict())  # copied into the NHWC weights, which stay NHWC
    w = nhwc.backbone.layer1[0].weight  # (the stem's single input channel makes both orders alike)
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    x = torch.randn(2, 1, 64, 64)
    a, b = plain(x), nhwc(x)
    assert a.grid == b.grid and b.patches.shape == a.patches.shape
    torch.testing.assert_close(b.patches, a.patches, **({"atol": 1e-5, "rtol": 1e-4} if precision == "fp32" else
                                                        {"atol": 0.05, "rtol": 0.05}))
    b.pooled.sum().backward()
    assert w.grad is not None
    save_weights(nhwc.state_dict(), tmp_path / "w.safetensors")  # safetensors wants contiguous tensors
    plain.load_state_dict(load_weights(tmp_path / "w.safetensors"))
    assert torch.equal(plain.backbone.layer1[0].weight, w)
    with pytest.raises(ValueError, match="CNN encoders"):
        build_image_encoder(VisionConfig(name="hf:x", hf_config=TINY_DINO, image_size=56, channels_last=True))
