"""Backbones: any timm model by name, plus ResNet-IBN-a (VehicleNet sec. IV-A, SSBVER sec. 3.1).

VehicleNet sec. IV-A: "the classification layer of the pre-trained backbone model is removed ... the
original average pooling layer is replaced with the adaptive average pooling layer" -- so the backbone
is built with ``num_classes=0`` and, for CNNs, returns its last feature map [B, C, H, W]; pooling happens
afterwards (:meth:`Backbone.pool`, the adaptive average pool of the paper's Fig. 3). Transformers return
timm's pooled pre-logits feature [B, C] (ViT: the CLS token after the final norm; Swin: the mean of the
tokens), since their "feature map" is a token sequence.

Pretrained weights never touch the network: ``pretrained=True`` looks for the weights timm would
download in the local caches (Hugging Face hub cache, torch hub ``checkpoints/``, ``$VREID_WEIGHTS_DIR``)
and raises :class:`~vreid.errors.VreidError` naming the file to download and where to put it;
``pretrained="/path/file"`` loads a local ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` state dict.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from vreid.errors import ConfigError, VreidError
from vreid.models.families import LAST_STRIDE_FAMILIES, backbone_family
from vreid.models.ibn import IBN_A_URLS, is_ibn_a, resnet_ibn_a

PretrainedArg = Union[bool, str, os.PathLike, None]



class Backbone(nn.Module):
    """A timm model without classifier.

    ``forward(x)`` gives the last feature map [B, C, H, W] for CNNs (NCHW output of
    ``forward_features``) and the pooled feature [B, C] otherwise. ``pool(f)`` maps either to [B, C] with
    timm's own ``forward_head(pre_logits=True)`` (global average pooling for ResNet/DenseNet/SENet,
    pooling + LayerNorm for ConvNeXt, identity for an already pooled [B, C]).

    Attributes: ``body`` (the timm model), ``name``, ``feat_dim``, ``last_stride_applied`` (bool) and
    ``pretrained_report`` (dict or None: file, loaded/missing/unexpected keys).
    """

    def __init__(self, body: nn.Module, name: str, feat_dim: int):
        super().__init__()
        self.body = body
        self.name = name
        self.feat_dim = int(feat_dim)
        self.last_stride_applied = False
        self.pretrained_report: Optional[dict[str, Any]] = None

    def _is_map(self, f: torch.Tensor) -> bool:
        return f.ndim == 4 and getattr(self.body, "output_fmt", "NCHW") == "NCHW"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body.forward_features(x)
        if self._is_map(f):
            return f
        return self.body.forward_head(f, pre_logits=True)

    def pool(self, f: torch.Tensor) -> torch.Tensor:
        if f.ndim == 2:
            return f
        return self.body.forward_head(f, pre_logits=True).flatten(1)


# -- construction --------------------------------------------------------------------------------------
def _create_timm(name: str, img_size: Optional[tuple[int, int]]) -> nn.Module:
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"model.backbone: unknown backbone {name!r} (not a timm model nor one of "
                          f"{sorted(IBN_A_URLS)})")
    base: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    # Transformers accept img_size / dynamic_img_size (positional embeddings or attention masks are
    # resampled to the input); CNN constructors reject unknown keywords, hence the fallbacks.
    attempts: list[dict[str, Any]] = []
    if img_size is not None:
        attempts.append({"img_size": tuple(img_size), "dynamic_img_size": True})
        attempts.append({"img_size": tuple(img_size)})
    attempts.append({"dynamic_img_size": True})
    attempts.append({})
    last_exc: Optional[Exception] = None
    for extra in attempts:
        try:
            return timm.create_model(name, **base, **extra)
        except TypeError as exc:
            if "unexpected keyword" not in str(exc) and "got an unexpected" not in str(exc):
                raise
            last_exc = exc
    raise ConfigError(f"model.backbone: cannot build {name!r}: {last_exc}")


def set_last_stride(body: nn.Module, last_stride: int) -> bool:
    """Set the stride of the last down-sampling stage to ``last_stride`` (1 or 2) by changing strides,
    never by dilation (the re-id "last stride 1" trick). Returns whether the model had such a stage.

    ResNet family (incl. IBN-a, SE-ResNeXt, SENet-154): convs / pools of ``layer4[0]`` (3x3 conv and the
    downsample). DenseNet: the last transition's 2x2 average pool becomes identity (stride 1).
    ConvNeXt: the last stage's 2x2 patchify conv gets stride 1 (its output is one pixel smaller).
    Transformers have no such stage: returns False. :func:`build_backbone` calls this for the ``resnet``
    family only (:mod:`vreid.models.families`); the other cases are here for explicit callers.
    """
    if last_stride not in (1, 2):
        raise ConfigError(f"model.last_stride: expected 1 or 2, got {last_stride!r}")
    target = None
    if hasattr(body, "layer4"):
        target = body.layer4[0]
    elif hasattr(body, "features") and hasattr(body.features, "transition3"):
        target = body.features.transition3
    elif hasattr(body, "stages") and hasattr(body.stages[-1], "downsample"):
        target = body.stages[-1].downsample
    if target is None:
        return False
    if last_stride == 2:
        return True  # timm's default: nothing to change
    for mod in target.modules():
        if isinstance(mod, nn.Conv2d) and max(mod.stride) > 1:
            mod.stride = (1, 1)
        elif isinstance(mod, (nn.AvgPool2d, nn.MaxPool2d)):
            stride = mod.stride if isinstance(mod.stride, int) else max(mod.stride)
            if stride > 1:  # a pure down-sampling pool (avg-down shortcut, DenseNet transition)
                mod.stride, mod.kernel_size, mod.padding = 1, 1, 0
    return True


def build_backbone(name: str, pretrained: PretrainedArg = False, last_stride: int = 1,
                   img_size: Optional[tuple[int, int] | list[int]] = None) -> tuple[Backbone, int]:
    """Build backbone ``name`` without classifier (VehicleNet Fig. 3; SSBVER sec. 3.1).

    ``name``: any ``timm`` model name (``resnet50``, ``densenet121``, ``seresnext101_32x4d``,
    ``senet154``, ``vit_base_patch16_224``, ``swin_base_patch4_window7_224``, ``convnext_base``,
    ``test_resnet`` ...) or ``resnet{18,34,50,101}_ibn_a``.
    ``pretrained``: False (random init), True (weights from the local caches, see module docstring) or a
    path to a local weights file. ``last_stride``: 1 or 2 (see :func:`set_last_stride`; ignored by
    transformers). Applied to the ``resnet`` family only (see :mod:`vreid.models.families`): for any other
    family the model keeps timm's strides and ``last_stride_applied`` is False.
    ``img_size``: (h, w) passed to transformers (with ``dynamic_img_size=True`` where timm
    supports it, so any input size works).

    Returns ``(backbone, feat_dim)`` where ``feat_dim`` is the pooled feature size.
    """
    if img_size is not None:
        img_size = tuple(int(v) for v in img_size)
        if len(img_size) != 2:
            raise ConfigError(f"img_size: expected (height, width), got {img_size}")
    if is_ibn_a(name):
        body = resnet_ibn_a(name, num_classes=0)
    else:
        body = _create_timm(name, img_size)
    feat_dim = int(getattr(body, "head_hidden_size", None) or body.num_features)
    backbone = Backbone(body, name, feat_dim)
    if last_stride not in (1, 2):
        raise ConfigError(f"model.last_stride: expected 1 or 2, got {last_stride!r}")
    family = backbone_family(name)
    if family in LAST_STRIDE_FAMILIES:
        backbone.last_stride_applied = set_last_stride(body, last_stride)
        if not backbone.last_stride_applied and last_stride == 1:
            warnings.warn(f"backbone {name!r}: no layer4 found; last_stride=1 ignored", stacklevel=2)
    if pretrained is True:
        path = find_cached_weights(name)
        if path is None:
            raise VreidError(missing_weights_message(name))
        backbone.pretrained_report = load_pretrained(backbone, path)
    elif pretrained not in (False, None):
        backbone.pretrained_report = load_pretrained(backbone, Path(pretrained))
    return backbone, feat_dim


# -- offline pretrained weights ------------------------------------------------------------------------
def _weight_sources(name: str) -> list[dict[str, Any]]:
    """Where timm would fetch ``name``'s weights: [{"hf_hub_id", "filenames"} | {"url"} | {"file"}]."""
    if is_ibn_a(name):
        return [{"url": IBN_A_URLS[name]}]
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as exc:
        raise ConfigError(f"model.backbone {name!r}: {exc}") from None
    if cfg is None:
        return []
    out: list[dict[str, Any]] = []
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        out.append({"hf_hub_id": cfg.hf_hub_id, "filenames": names})
    if cfg.url:
        out.append({"url": cfg.url})
    if cfg.file:
        out.append({"file": cfg.file})
    return out


def _torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_cached_weights(name: str) -> Optional[Path]:
    """The local file holding ``name``'s pretrained weights, or None. Never uses the network.

    Looked up, in order: ``$VREID_WEIGHTS_DIR/<name>.{safetensors,pth,pt,bin}`` and
    ``$VREID_WEIGHTS_DIR/<basename of the url>``; the Hugging Face hub cache (``HF_HUB_CACHE``) for the
    pretrained cfg's ``hf_hub_id``; torch hub's ``checkpoints/<basename of the url>``; the cfg's ``file``.
    """
    sources = _weight_sources(name)
    wdir = os.environ.get("VREID_WEIGHTS_DIR")
    if wdir:
        cands = [Path(wdir) / f"{name}{ext}" for ext in (".safetensors", ".pth", ".pt", ".bin")]
        cands += [Path(wdir) / Path(s["url"]).name for s in sources if "url" in s]
        for c in cands:
            if c.is_file():
                return c
    for s in sources:
        if "hf_hub_id" in s:
            try:
                from huggingface_hub import try_to_load_from_cache
            except ImportError:  # pragma: no cover - huggingface_hub ships with timm
                continue
            repo, _, rev = s["hf_hub_id"].partition("@")
            for fn in s["filenames"]:
                hit = try_to_load_from_cache(repo, fn, revision=rev or None)
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
        elif "url" in s:
            cand = _torch_hub_checkpoints() / Path(s["url"]).name
            if cand.is_file():
                return cand
        elif "file" in s and Path(s["file"]).is_file():
            return Path(s["file"])
    return None


def missing_weights_message(name: str) -> str:
    sources = _weight_sources(name)
    if not sources:
        return (f"pretrained: true for backbone {name!r}, but timm has no pretrained weights for it; "
                f"pass 'pretrained: /path/to/weights.pth' or 'pretrained: false'")
    lines = [f"pretrained weights for backbone {name!r} are not in the local cache (this machine is "
             f"offline, nothing is downloaded). Do one of:"]
    for s in sources:
        if "hf_hub_id" in s:
            repo = s["hf_hub_id"].partition("@")[0]
            fn = s["filenames"][0]
            lines.append(f"  - download https://huggingface.co/{repo}/resolve/main/{fn} and pass "
                         f"'pretrained: /path/to/{fn}' (or copy a Hugging Face cache holding '{repo}' "
                         f"into {_hf_cache_dir()})")
        elif "url" in s:
            fn = Path(s["url"]).name
            lines.append(f"  - download {s['url']} and put it at {_torch_hub_checkpoints() / fn}, or pass "
                         f"'pretrained: /path/to/{fn}'")
    lines.append("  - or set VREID_WEIGHTS_DIR to a folder holding "
                 f"'{name}.safetensors' / '{name}.pth'")
    return "\n".join(lines)


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return "~/.cache/huggingface/hub"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: ``.safetensors``, or a torch pickle (loaded with ``weights_only=True``)
    holding a state dict, possibly nested under ``state_dict`` / ``model`` / ``state_dict_ema``; a
    ``module.`` prefix (DataParallel) is removed."""
    path = Path(path)
    if not path.is_file():
        raise VreidError(f"pretrained weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VreidError(f"{path}: cannot read weights ({type(exc).__name__}: {exc}); expected a state dict "
                         f"in .pth/.pt/.bin (torch.save) or .safetensors format") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise VreidError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise VreidError(f"{path}: entry {k!r} is a {type(v).__name__}, expected a tensor")
        out[k[7:] if k.startswith("module.") else k] = v
    return out


def _classifier_prefixes(body: nn.Module) -> list[str]:
    cfg = getattr(body, "pretrained_cfg", None) or {}
    cls = cfg.get("classifier") if isinstance(cfg, dict) else getattr(cfg, "classifier", None)
    names = [cls] if isinstance(cls, str) else list(cls or [])
    return names or ["fc"]


def load_pretrained(backbone: Backbone, path: Path, strict: Optional[bool] = None) -> dict[str, Any]:
    """Load the weights file ``path`` into ``backbone.body``.

    timm's ``checkpoint_filter_fn`` of the architecture (if any) adapts the checkpoint first (e.g. ViT
    position embeddings resampled to ``img_size``). Classifier keys (the pretrained cfg's ``classifier``,
    e.g. ``fc.*``, ``head.fc.*``) are dropped. ``strict`` (default: True for ResNet-IBN-a, whose public
    checkpoints match key for key) fails on any missing or unexpected key; otherwise they are reported
    in a warning and in the returned dict. Shape mismatches always fail. ``num_batches_tracked`` buffers
    absent from old checkpoints are not counted as missing.
    """
    body = backbone.body
    if strict is None:
        strict = is_ibn_a(backbone.name)
    state = read_state_dict(path)
    filt = getattr(sys.modules.get(type(body).__module__), "checkpoint_filter_fn", None)
    if filt is not None and not is_ibn_a(backbone.name):
        try:
            state = filt(state, body)
        except Exception as exc:  # a foreign checkpoint layout: load it as is and report the keys
            warnings.warn(f"{path}: timm's checkpoint filter for {backbone.name!r} failed ({exc}); loading as is")
    prefixes = _classifier_prefixes(body)
    dropped = sorted(k for k in state if any(k == p or k.startswith(p + ".") for p in prefixes))
    for k in dropped:
        del state[k]
    own = body.state_dict()
    bad_shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad_shapes:
        raise VreidError(f"{path}: weights do not fit backbone {backbone.name!r}: " + "; ".join(bad_shapes[:5])
                         + (f" (+{len(bad_shapes) - 5} more)" if len(bad_shapes) > 5 else ""))
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    loaded = [k for k in state if k in own]
    if not loaded:
        raise VreidError(f"{path}: no tensor matches backbone {backbone.name!r} (file keys e.g. "
                         f"{list(state)[:3]}, model keys e.g. {list(own)[:3]})")
    if strict and (missing or unexpected):
        raise VreidError(f"{path}: not a {backbone.name} checkpoint (strict load): missing keys "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys "
                         f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    body.load_state_dict(state, strict=False)
    if missing or unexpected:
        warnings.warn(f"{path} -> {backbone.name}: {len(missing)} missing keys {missing[:5]}, "
                      f"{len(unexpected)} unexpected keys {unexpected[:5]}", stacklevel=2)
    return {"path": str(path), "loaded": len(loaded), "missing": missing, "unexpected": unexpected,
            "dropped_classifier": dropped}
