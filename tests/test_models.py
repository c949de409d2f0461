"""Backbones, ResNet-IBN-a key layout, heads, ReidModel, offline pretrained loading, efficiency."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from vreid.errors import ConfigError, VreidError
from vreid.models import (BNNeckHead, DINOHead, ReidModel, VehicleNetHead, build_backbone, build_model,
                          count_parameters, measure_efficiency)
from vreid.models.backbones import find_cached_weights

X64 = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def offline_caches(tmp_path, monkeypatch):
    """Empty weight caches: nothing in this test module may find (or fetch) real weights."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("VREID_WEIGHTS_DIR", raising=False)


# The papers' backbones and the pooled feature size each paper's head is built on (VehicleNet Fig. 3:
# ResNet-50 / SE-ResNeXt101 2048-d; SSBVER sec. 4.3: ResNet50(-IBN-a) 2048, ViT-B 768, Swin-B 1024,
# ConvNeXt-B 1024), and whether "last stride 1" reaches them (ResNets only).
PAPER_BACKBONES = [("resnet50", 2048, True), ("resnet50_ibn_a", 2048, True), ("seresnext101_32x4d", 2048, True),
                   ("vit_base_patch16_224", 768, False), ("swin_base_patch4_window7_224", 1024, False),
                   ("convnext_base", 1024, False)]


@pytest.mark.parametrize("name,dim,last_stride", PAPER_BACKBONES)
def test_paper_backbones_build_with_the_papers_feature_size(name, dim, last_stride):
    """vreid's factory (IBN-a names, ``num_classes=0``, the pooled size it reports, last stride) on the
    meta device: no memory, no weights, every backbone the shipped search spaces name."""
    with torch.device("meta"):
        bb, feat_dim = build_backbone(name, last_stride=1, img_size=(256, 256))
    assert feat_dim == dim
    assert bb.last_stride_applied is last_stride


def test_shipped_search_spaces_name_buildable_backbones():
    import yaml

    from conftest import REPO

    names = set()
    for f in (REPO / "search_spaces").glob("*.yaml"):
        doc = yaml.safe_load(f.read_text()) or {}
        if isinstance(doc.get("model"), dict) and "backbone" in doc["model"]:
            names.add(doc["model"]["backbone"])
        names.update(((doc.get("grid") or {}).get("params") or {}).get("model.backbone", []))
    assert names >= {"resnet50", "seresnext101_32x4d"}
    known = {n for n, _, _ in PAPER_BACKBONES} | {"test_resnet"}
    assert names <= known, f"add {sorted(names - known)} to PAPER_BACKBONES with its paper's feature size"
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("no_such_net")


@pytest.mark.parametrize("name,kind", [("test_resnet", "map"), ("test_convnext", "map"), ("test_vit", "pooled")])
def test_backbone_outputs(name, kind):
    bb, dim = build_backbone(name, img_size=(64, 64))
    f = bb(X64)
    if kind == "map":
        assert f.ndim == 4 and f.shape[:2] == (4, dim)
    else:
        assert tuple(f.shape) == (4, dim)
    assert tuple(bb.pool(f).shape) == (4, dim)


def test_last_stride_changes_stride_without_dilation():
    s1, _ = build_backbone("test_resnet", last_stride=1)
    s2, _ = build_backbone("test_resnet", last_stride=2)
    assert s1(X64).shape[-2:] == (2 * s2(X64).shape[-2], 2 * s2(X64).shape[-1])
    conv = s1.body.layer4[0].conv2 if hasattr(s1.body.layer4[0], "conv2") else s1.body.layer4[0].conv1
    assert all(d == 1 for m in s1.body.layer4.modules() if isinstance(m, torch.nn.Conv2d) for d in m.dilation)
    assert conv.stride == (1, 1)


def test_vit_accepts_other_input_sizes():
    bb, dim = build_backbone("test_vit", img_size=(64, 64))
    assert tuple(bb(torch.randn(2, 3, 96, 64)).shape) == (2, dim)


# -- ResNet-IBN-a -------------------------------------------------------------------------------------
def ibn_net_keys(layers=(3, 4, 6, 3), expansion=4):
    """The key set of IBN-Net's resnet_ibn_a (Bottleneck_IBN), written from the architecture."""
    bn = ["weight", "bias", "running_mean", "running_var"]
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in bn]
    for li, n in enumerate(layers, start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            keys += [f"{p}.conv1.weight", f"{p}.conv2.weight", f"{p}.conv3.weight"]
            if li <= 3:
                keys += [f"{p}.bn1.IN.weight", f"{p}.bn1.IN.bias"] + [f"{p}.bn1.BN.{k}" for k in bn]
            else:
                keys += [f"{p}.bn1.{k}" for k in bn]
            keys += [f"{p}.bn2.{k}" for k in bn] + [f"{p}.bn3.{k}" for k in bn]
            if b == 0:
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{k}" for k in bn]
    return set(keys + ["fc.weight", "fc.bias"])


def test_resnet50_ibn_a_matches_public_checkpoint_layout(tmp_path):
    bb, dim = build_backbone("resnet50_ibn_a", last_stride=2)
    assert dim == 2048
    sd = bb.body.state_dict()
    own = {k for k in sd if not k.endswith("num_batches_tracked")}
    assert own | {"fc.weight", "fc.bias"} == ibn_net_keys()
    assert sd["layer1.0.bn1.IN.weight"].shape == (32,) and sd["layer1.0.bn1.BN.weight"].shape == (32,)
    assert sd["layer2.0.bn1.IN.weight"].shape == (64,) and sd["layer3.5.bn1.BN.running_var"].shape == (128,)
    assert sd["layer4.0.bn1.weight"].shape == (512,) and sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sum(v.numel() for k, v in bb.body.named_parameters()) == pytest.approx(23.51e6, rel=2e-3)  # SSBVER Table 1

    # A file in the public layout (with fc, without num_batches_tracked, as old torch saved) loads strictly.
    g = torch.Generator().manual_seed(0)
    ckpt = {k: torch.randn(v.shape, generator=g) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    ckpt["fc.weight"], ckpt["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    path = tmp_path / "resnet50_ibn_a-d9d0bb7b.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ckpt.items()}}, path)
    loaded, _ = build_backbone("resnet50_ibn_a", pretrained=str(path))
    rep = loaded.pretrained_report
    assert rep["missing"] == [] and rep["unexpected"] == [] and rep["dropped_classifier"] == ["fc.bias", "fc.weight"]
    assert torch.equal(loaded.body.state_dict()["layer1.0.bn1.IN.weight"], ckpt["layer1.0.bn1.IN.weight"])
    assert torch.equal(loaded.body.state_dict()["layer4.2.bn3.running_var"], ckpt["layer4.2.bn3.running_var"])


def test_ibn_strict_load_rejects_foreign_keys(tmp_path):
    bb, _ = build_backbone("resnet18_ibn_a")
    sd = {k: v.clone() for k, v in bb.body.state_dict().items()}
    del sd["layer2.0.bn1.IN.weight"]
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    with pytest.raises(VreidError, match="strict.*layer2.0.bn1.IN.weight.*extra.weight"):
        build_backbone("resnet18_ibn_a", pretrained=str(path))


def test_ibn_layer_normalises_halves():
    from vreid.models.ibn import IBN

    layer = IBN(4).eval()
    x = torch.randn(2, 4, 5, 5) * 3 + 1
    y = layer(x)
    # first half: instance norm (per sample and channel: zero mean, unit variance)
    assert y[:, :2].mean(dim=(2, 3)).abs().max() < 1e-5
    assert y[:, :2].var(dim=(2, 3), unbiased=False).sub(1).abs().max() < 1e-3
    # second half: batch norm with fresh running stats (mean 0, var 1) is the identity in eval
    assert torch.allclose(y[:, 2:], x[:, 2:] / (1 + 1e-5) ** 0.5, atol=1e-5)


# -- pretrained, offline ------------------------------------------------------------------------------
def test_pretrained_true_without_cache_says_what_to_download():
    with pytest.raises(VreidError) as err:
        build_backbone("test_resnet", pretrained=True)
    msg = str(err.value)
    assert "huggingface.co/timm/test_resnet" in msg and "pretrained: /path/to/" in msg
    with pytest.raises(VreidError, match="resnet50_ibn_a-d9d0bb7b.pth"):
        build_backbone("resnet50_ibn_a", pretrained=True)


def test_pretrained_true_uses_local_caches(tmp_path, monkeypatch):
    src, _ = build_backbone("test_resnet")
    # a Hugging Face cache laid out as hf_hub_download leaves it
    repo = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    root = tmp_path / "hf" / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("abc123")
    (root / "snapshots" / "abc123").mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.body.state_dict().items()}, str(root / "snapshots" / "abc123" / "model.safetensors"))
    assert find_cached_weights("test_resnet") is not None
    bb, _ = build_backbone("test_resnet", pretrained=True)
    assert bb.pretrained_report["missing"] == []
    for k, v in src.body.state_dict().items():
        assert torch.equal(bb.body.state_dict()[k], v)
    # torch hub checkpoints/ for IBN-Net urls
    ibn, _ = build_backbone("resnet18_ibn_a")
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(ibn.body.state_dict(), tmp_path / "torch" / "hub" / "checkpoints" / "resnet18_ibn_a-2f571257.pth")
    loaded, _ = build_backbone("resnet18_ibn_a", pretrained=True)
    assert torch.equal(loaded.body.conv1.weight, ibn.body.conv1.weight)


def test_pretrained_path_vit_resamples_position_embedding(tmp_path):
    src, _ = build_backbone("test_vit", img_size=(64, 64))
    path = tmp_path / "vit.pth"
    torch.save({"model": src.body.state_dict()}, path)
    dst, _ = build_backbone("test_vit", img_size=(96, 96), pretrained=str(path))
    assert dst.body.pos_embed.shape != src.body.pos_embed.shape
    assert torch.equal(dst.body.cls_token, src.body.cls_token)


def test_pretrained_bad_file_names_it(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"\x00\x01")
    with pytest.raises(VreidError, match="garbage.pth"):
        build_backbone("test_resnet", pretrained=str(bad))
    with pytest.raises(VreidError, match="not found"):
        build_backbone("test_resnet", pretrained=str(tmp_path / "missing.pth"))


# -- heads --------------------------------------------------------------------------------------------
def test_vehiclenet_head_feature_is_bn_output():
    head = VehicleNetHead(8, 5, fc_dim=6, dropout=0.5).eval()
    fmap = torch.randn(3, 8, 2, 2)
    out = head(fmap)
    pooled = fmap.mean(dim=(2, 3))
    pre = pooled @ head.fc1.weight.t() + head.fc1.bias
    bn = head.bn
    feat = (pre - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    assert torch.allclose(out["feat_pre"], pre, atol=1e-5)
    assert torch.allclose(out["feat"], feat, atol=1e-5)
    assert torch.allclose(out["logits"], feat @ head.classifier.weight.t() + head.classifier.bias, atol=1e-5)


def test_bnneck_head_frozen_bias_no_classifier_bias():
    head = BNNeckHead(8, 5)
    assert head.classifier.bias is None and not head.bn.bias.requires_grad
    x = torch.randn(6, 8)
    out = head(x)
    assert torch.equal(out["feat_pre"], x)  # triplet on the pre-BN feature
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + head.bn.eps)
    assert torch.allclose(out["feat"], expected, atol=1e-5)  # train mode: batch statistics, bias 0
    out["logits"].sum().backward()
    assert head.bn.bias.grad is None


def test_dino_head_structure_and_formula():
    head = DINOHead(16, 10, hidden_dim=32, bottleneck_dim=8, nlayers=3)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 32), (32, 8)]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2
    assert not head.last_layer.weight_g.requires_grad  # norm_last_layer
    w = head.last_layer.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(10), atol=1e-6)
    x = torch.randn(3, 16)
    expected = F.normalize(head.mlp(x), dim=-1) @ w.t()
    assert torch.allclose(head(x), expected, atol=1e-6)
    copy.deepcopy(head)  # the EMA teacher is a deep copy
    assert DINOHead(16, 10, nlayers=1).mlp.out_features == 256


# -- ReidModel ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit", "test_convnext"])
@pytest.mark.parametrize("head", ["vehiclenet", "bnneck"])
def test_reid_model_outputs(backbone, head):
    m = ReidModel(backbone, head=head, num_classes=7, img_size=[64, 64], dino_out_dim=12 if head == "bnneck" else None)
    out = m(X64)
    fd = 512 if head == "vehiclenet" else m.backbone_dim
    assert tuple(out["logits"].shape) == (4, 7) and tuple(out["feat"].shape) == (4, fd)
    assert ("dino" in out) == (head == "bnneck")
    if head == "bnneck":
        assert tuple(out["dino"].shape) == (4, 12)
    m.eval()
    out_eval = m(X64)
    assert set(out_eval) == set(out)
    assert torch.allclose(m.extract(X64), out_eval["feat"], atol=1e-6)


def test_extract_is_eval_whatever_the_mode():
    m = ReidModel("test_resnet", head="bnneck", num_classes=3)
    m.train()
    f_train_mode = m.extract(X64)
    assert m.training
    m.eval()
    assert torch.allclose(f_train_mode, m.extract(X64), atol=1e-6)
    assert torch.allclose(m.extract(X64[:1]), m.extract(X64)[:1], atol=1e-5)  # no batch statistics


def test_forward_features_multi_groups_by_resolution():
    m = ReidModel("test_resnet", head="bnneck", num_classes=3).eval()
    crops = [X64[:2], X64[2:], torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    calls = []
    m.backbone.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    feats = m.forward_features_multi(crops)
    assert calls == [4, 4]  # two passes: the 64x64 pair, the 32x32 pair
    for c, f in zip(crops, feats):
        assert torch.allclose(f, m.pooled_features(c), atol=1e-5)


def test_reset_classifier_keeps_everything_else():
    m = ReidModel("test_resnet", head="vehiclenet", num_classes=9)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    info = m.reset_classifier(4)
    assert info["old_num_classes"] == 9 and info["old_weight_shape"] == [9, 512]
    assert info["dropped_keys"] == ["head.classifier.weight", "head.classifier.bias"]
    after = m.state_dict()
    assert tuple(after["head.classifier.weight"].shape) == (4, 512) and m.num_classes == 4
    for k, v in before.items():
        if not k.startswith("head.classifier."):
            assert torch.equal(after[k], v), k


def test_build_model_and_count_parameters():
    m = build_model({"backbone": "test_resnet", "head": "bnneck", "num_classes": 5, "dino_out_dim": 6,
                     "dino_hidden_dim": 16, "dino_bottleneck_dim": 4})
    d = m.backbone_dim
    total = count_parameters(m)
    bb = sum(p.numel() for p in m.backbone.parameters())
    dino = (d * 16 + 16) + (16 * 16 + 16) + (16 * 4 + 4) + (6 * 4 + 6)
    assert total == bb + 2 * d + 5 * d + dino
    assert count_parameters(m, exclude_classifier=True, exclude_dino=True) == bb + 2 * d
    with pytest.raises(ConfigError, match="unknown keys"):
        build_model({"backbone": "test_resnet", "num_classes": 2, "colour": 1})
    with pytest.raises(ConfigError, match="head"):
        ReidModel("test_resnet", head="arcface", num_classes=2)


def test_measure_efficiency():
    m = ReidModel("test_resnet", head="bnneck", num_classes=5)
    r = measure_efficiency(m, (32, 32), batch_size=2, device="cpu", repeats=2, warmup=1)
    assert set(r) >= {"params_m", "ms_per_image_b1", "images_per_s", "peak_mem_mb", "feat_dim"}
    assert r["params_m"] == pytest.approx(count_parameters(m, exclude_classifier=True) / 1e6)
    assert r["feat_dim"] == m.backbone_dim and r["ms_per_image_b1"] > 0 and r["images_per_s"] > 0
    weights_mb = sum(p.numel() * 4 for p in m.parameters()) / 2**20
    assert r["peak_mem_mb"] >= weights_mb
    assert m.training  # mode restored


def test_ssl_head_runs_in_fp32_under_autocast():
    """SSBVER 4.3: the teacher's output is divided by tau_t = 5e-4..1e-3; in half precision its
    rounding would be an error of order one in the logits, so the SSL head runs in fp32."""
    torch.manual_seed(0)
    m = ReidModel("test_resnet", head="bnneck", num_classes=3, dino_out_dim=32, dino_hidden_dim=16,
                  dino_bottleneck_dim=8).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            out = m(x)
    assert out["dino"].dtype == torch.float32
    # same input to the head (the pooled feature) -> same output as the fp32 head
    with torch.no_grad():
        direct = m.dino_head(out["pooled"].float())
    assert torch.allclose(out["dino"], direct, atol=1e-6)
    assert torch.allclose(ref["dino"], m.dino_head(ref["pooled"]), atol=1e-6)


def test_one_factory_reads_a_checkpoint_config():
    """build_model takes the training kwargs or a checkpoint's model_config.json (run keys ignored)."""
    kw = {"backbone_name": "test_resnet", "head": "bnneck", "num_classes": 5, "img_size": [32, 32]}
    m = build_model({**kw, "image_size": [32, 32], "recipe": "ssbver", "stage": "stage1", "target": "veri776",
                     "eval": {"flip": False, "scales": [1.0]}, "pretrained": "/nonexistent.pth"}, pretrained=False)
    assert m.num_classes == 5 and m.head_name == "bnneck"
