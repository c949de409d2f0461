"""The papers' figures as labelled PNGs (matplotlib, Agg backend). Each function writes one file
atomically and returns its path.

* :func:`retrieval_figure` - ranked retrieval results with true / false matches in green / red
  (VehicleNet Fig. 6).
* :func:`heatmap_figure` - activation heat maps of the last feature map, "the network activation
  before the pooling layer" (VehicleNet Fig. 7, sec. V-C).
* :func:`loss_curves_figure` - training loss of Stage-I and Stage-II, one line per trial (VehicleNet Fig. 8).
* :func:`distance_distribution_figure` - positive vs negative pair distances of the normalised
  embeddings (SSBVER Fig. 4, sec. 4.4.4).
* :func:`saliency_figure` - input-gradient saliency of a query-gallery similarity,
  ``m_q = grad_{I_q} f(I_q).f(I_g)`` and ``m_g`` likewise (SSBVER Eq. 6, Fig. 6).

Models are anything with ``.extract(x) -> [B, D]`` and ``.backbone`` (a timm model whose
``forward_features`` - or ``forward`` - gives the last feature map), e.g. the ``ReidModel`` of
:func:`vreid.train.checkpoint.load_model_for_inference`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from vreid.errors import EvaluationInputError, VreidError
from vreid.io import atomic_path

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
TRUE_COLOR = "#1a9850"
FALSE_COLOR = "#d73027"
MANIFEST_COLUMNS = ("path", "vehicle_id", "camera")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | os.PathLike) -> Path:
    plt = _plt()
    out = Path(out)
    try:
        with atomic_path(out, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return out


# -- inputs ---------------------------------------------------------------------------------------
def check_manifest(df, where: str) -> None:
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise VreidError(f"{where}: manifest lacks column(s) {missing}; expected a vreid manifest with {list(MANIFEST_COLUMNS)}")


def resolve_image(path: str, image_root: Optional[str | os.PathLike] = None) -> Path:
    p = Path(path)
    if not p.is_absolute() and image_root is not None:
        p = Path(image_root) / p
    if not p.is_file():
        raise VreidError(f"image not found: {p} (manifest path '{path}')")
    return p


def load_image(path: str | os.PathLike, image_size: Sequence[int]):
    """``(tensor [1, 3, h, w], rgb uint8 [h, w, 3])``: the test-time input of a vreid model (resize to
    ``image_size`` = [h, w], ImageNet mean/std) and the resized picture it shows."""
    import torch
    from PIL import Image

    h, w = int(image_size[0]), int(image_size[1])
    with Image.open(path) as im:
        img = im.convert("RGB")
    resized = img.resize((w, h), Image.BILINEAR)
    rgb = np.asarray(resized, dtype=np.uint8)
    try:  # the data package's transform, when it exists, so figures see exactly what evaluation sees
        from vreid.data.transforms import test_transform

        x = test_transform((h, w))(img)
        if not isinstance(x, torch.Tensor):
            raise TypeError
    except (ImportError, AttributeError, TypeError):
        arr = rgb.astype(np.float32) / 255.0
        x = torch.from_numpy(((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy())
    return x.unsqueeze(0).float(), rgb


def _check_features(q: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(q, dtype=np.float32)
    g = np.asarray(g, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise EvaluationInputError(f"features must be [Q, D] and [G, D] with the same D, got {q.shape} and {g.shape}")
    # cosine similarity (VehicleNet sec. III-B): normalise even if the caller already did
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return q, g


def ranked_gallery(sim_row: np.ndarray, q_id, q_cam, g_ids: np.ndarray, g_cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gallery indices by decreasing similarity (stable: ties keep gallery order) with junk
    (same id and same camera as the query) removed, and whether each is a true match."""
    order = np.argsort(-sim_row, kind="stable")
    junk = (g_ids[order] == q_id) & (g_cams[order] == q_cam)
    order = order[~junk]
    return order, g_ids[order] == q_id


def pick_queries(q_ids: np.ndarray, q_cams: np.ndarray, g_ids: np.ndarray, g_cams: np.ndarray, n: int, seed: int) -> list[int]:
    """``n`` queries (seeded) that have at least one true match after junk removal, in query order."""
    valid = [i for i in range(len(q_ids)) if np.any((g_ids == q_ids[i]) & (g_cams != q_cams[i]))]
    if not valid:
        raise EvaluationInputError("no query has a true match in the gallery (different camera, same id)")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(valid), size=min(n, len(valid)), replace=False)
    return sorted(valid[i] for i in chosen)


# -- Fig. 6: ranked retrieval ---------------------------------------------------------------------
def retrieval_figure(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    query_manifest,
    gallery_manifest,
    out: str | os.PathLike,
    num_queries: int = 4,
    top_k: int = 5,
    seed: int = 0,
    image_root: Optional[str | os.PathLike] = None,
    query_indices: Optional[Sequence[int]] = None,
) -> Path:
    """VehicleNet Fig. 6: for a few queries, the top-``top_k`` gallery images by cosine similarity,
    left to right, framed green (true match) or red (false match); same-id-same-camera gallery images
    are junk and left out, as in the evaluation protocol."""
    plt = _plt()
    q, g = _check_features(query_features, gallery_features)
    check_manifest(query_manifest, "query manifest")
    check_manifest(gallery_manifest, "gallery manifest")
    if len(query_manifest) != len(q) or len(gallery_manifest) != len(g):
        raise EvaluationInputError(f"features ({len(q)} queries, {len(g)} gallery) do not match the manifests "
                                   f"({len(query_manifest)} / {len(gallery_manifest)} rows)")
    q_ids = query_manifest["vehicle_id"].astype(str).to_numpy()
    q_cams = query_manifest["camera"].astype(str).to_numpy()
    g_ids = gallery_manifest["vehicle_id"].astype(str).to_numpy()
    g_cams = gallery_manifest["camera"].astype(str).to_numpy()
    qi = list(query_indices) if query_indices is not None else pick_queries(q_ids, q_cams, g_ids, g_cams, num_queries, seed)
    cols = 1 + top_k
    fig, axes = plt.subplots(len(qi), cols, figsize=(1.7 * cols, 2.1 * len(qi) + 0.6), squeeze=False)
    for row, i in enumerate(qi):
        sim = g @ q[i]
        order, is_true = ranked_gallery(sim, q_ids[i], q_cams[i], g_ids, g_cams)
        ax = axes[row, 0]
        _show(ax, resolve_image(query_manifest["path"].iloc[i], image_root), "black", 2)
        ax.set_title(f"query\nid {q_ids[i]}  {_cam(q_cams[i])}", fontsize=8, fontweight="bold")
        for k in range(top_k):
            ax = axes[row, 1 + k]
            if k >= len(order):
                ax.axis("off")
                continue
            j = order[k]
            color = TRUE_COLOR if is_true[k] else FALSE_COLOR
            _show(ax, resolve_image(gallery_manifest["path"].iloc[j], image_root), color, 5)
            ax.set_title(f"#{k + 1} id {g_ids[j]}  {_cam(g_cams[j])}\ncos {sim[j]:.3f}", fontsize=8, color=color)
    fig.suptitle(f"Ranked retrieval (top {top_k}): green = true match, red = false match\n"
                 "(same-id same-camera gallery images are junk and excluded)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def _cam(cam: str) -> str:
    # manifests store camera numbers (c012 -> 12)
    return f"cam {cam}" if str(cam).lstrip("-").isdigit() else str(cam)


def _show(ax, path: Path, color: str, width: float) -> None:
    from PIL import Image

    with Image.open(path) as im:
        # every panel the same size whatever the crop's shape, so titles and frames line up
        ax.imshow(np.asarray(im.convert("RGB")), aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


# -- Fig. 7: activation heat maps -----------------------------------------------------------------
def feature_map(model, x):
    """The backbone's last feature map as ``[B, C, h, w]`` (NHWC maps and ViT patch tokens are laid
    out accordingly): "the network activation before the pooling layer" (VehicleNet sec. V-C)."""
    import torch

    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise VreidError(f"{type(model).__name__} has no '.backbone' to take the last feature map from")
    # vreid's Backbone wraps the timm model as ``.body``; its forward pools transformer tokens, so go
    # to timm's unpooled ``forward_features`` whenever it is there
    body = getattr(backbone, "body", backbone)
    fm = body.forward_features(x) if hasattr(body, "forward_features") else backbone(x)
    if isinstance(fm, (list, tuple)):
        fm = fm[-1]
    if fm.ndim == 4 and getattr(body, "output_fmt", "NCHW") == "NHWC":  # timm Swin
        fm = fm.permute(0, 3, 1, 2)
    elif fm.ndim == 3:  # ViT tokens [B, N, C]: keep the patch tokens, lay them out on the patch grid
        grid = getattr(getattr(body, "patch_embed", None), "grid_size", None)
        if grid is None:
            side = int(round(fm.shape[1] ** 0.5))
            grid = (side, side)
        h, w = int(grid[0]), int(grid[1])
        fm = fm[:, -h * w:, :].transpose(1, 2).reshape(fm.shape[0], fm.shape[2], h, w)
    if fm.ndim != 4:
        raise VreidError(f"backbone output has shape {tuple(fm.shape)}; expected a feature map [B, C, h, w] "
                         "(create the backbone without global pooling)")
    return fm.to(torch.float32)


def activation_map(model, x) -> np.ndarray:
    """Channel-mean of the last feature map, bilinearly upsampled to the input size, min-max scaled
    to [0, 1] per image: ``[B, H, W]``."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        fm = feature_map(model, x)
        cam = fm.mean(dim=1, keepdim=True)
        cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    cam = cam.numpy()
    lo = cam.reshape(len(cam), -1).min(axis=1)[:, None, None]
    hi = cam.reshape(len(cam), -1).max(axis=1)[:, None, None]
    return (cam - lo) / np.maximum(hi - lo, 1e-12)


def heatmap_figure(
    model,
    image_paths: Sequence[Sequence[str | os.PathLike]],
    image_size: Sequence[int],
    out: str | os.PathLike,
    group_labels: Optional[Sequence[str]] = None,
) -> Path:
    """VehicleNet Fig. 7: each row is one vehicle id (``image_paths[row]`` its images, ideally from
    different cameras); each image is shown with its activation heat map overlaid beside it."""
    import torch

    plt = _plt()
    groups = [list(g) for g in image_paths if len(g)]
    if not groups:
        raise VreidError("heatmap_figure: no images given")
    ncols = 2 * max(len(g) for g in groups)
    cell_h = 1.6 * float(image_size[0]) / float(image_size[1]) + 0.45  # room for the two-line titles
    fig, axes = plt.subplots(len(groups), ncols, figsize=(1.6 * ncols + 1.0, cell_h * len(groups) + 0.5),
                             squeeze=False, layout="constrained")
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        for r, group in enumerate(groups):
            loaded = [load_image(p, image_size) for p in group]
            x = torch.cat([t for t, _ in loaded])
            cams = activation_map(model, x)
            for c, ((_, rgb), cam) in enumerate(zip(loaded, cams)):
                a0, a1 = axes[r, 2 * c], axes[r, 2 * c + 1]
                a0.imshow(rgb)
                a1.imshow(rgb)
                a1.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                label = group_labels[r] if group_labels else f"group {r + 1}"
                a0.set_title(f"{label}\n{Path(group[c]).name}", fontsize=7)
                a1.set_title("activation", fontsize=7)
            for c in range(2 * len(group), ncols):
                axes[r, c].axis("off")
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("Activation heat maps of the last feature map (channel mean, upsampled; red = strong)", fontsize=10)
        import matplotlib.cm as cm
        import matplotlib.colors as mcolors

        # an opaque colour bar: the overlay's alpha would wash it out
        sm = cm.ScalarMappable(norm=mcolors.Normalize(0, 1), cmap="jet")
        fig.colorbar(sm, ax=axes.ravel().tolist(), shrink=0.6, label="normalised activation")
    finally:
        model.train(was_training)
    return _save(fig, out)


# -- Fig. 8: loss curves --------------------------------------------------------------------------
def loss_histories(experiment: str, tracking_uri: str, run_ids: Optional[Sequence[str]] = None,
                   key: str = "loss") -> dict[str, dict[str, list[tuple[float, float]]]]:
    """``{trial: {"stage1": [(epoch, loss)], "stage2": [(epoch within Stage-II, loss)]}}`` from the
    ``stage1/<key>`` and ``stage2/<key>`` metric histories (Stage-II steps continue after Stage-I's,
    so ``stage1.epochs`` is subtracted)."""
    from mlflow import MlflowClient

    from vreid.report.tables import _num, _trial_name, experiment_runs, trial_runs

    runs = trial_runs(experiment_runs(experiment, tracking_uri))
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(list(run_ids))]
    client = MlflowClient(tracking_uri)
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for _, r in runs.iterrows():
        e1 = _num(r.get("params.stage1.epochs")) or 0
        curves = {}
        for stage, offset in (("stage1", 0), ("stage2", int(e1))):
            hist = sorted(client.get_metric_history(r["run_id"], f"{stage}/{key}"), key=lambda m: (m.step, m.timestamp))
            if hist:
                curves[stage] = [(m.step - offset, m.value) for m in hist]
        if curves:
            out[_trial_name(r)] = curves
    return out


def loss_curves_figure(histories: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], out: str | os.PathLike,
                       ylabel: str = "training loss") -> Path:
    """VehicleNet Fig. 8: Stage-I (left) and Stage-II (right) training loss per epoch, one line per trial."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    stages = [s for s in ("stage1", "stage2") if any(s in h for h in histories.values())]
    if not stages:
        raise VreidError("loss_curves_figure: no stage1/stage2 loss history to plot")
    fig, axes = plt.subplots(1, len(stages), figsize=(5.2 * len(stages), 3.8), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(histories) <= 10 else "tab20")
    titles = {"stage1": "Stage-I (VehicleNet)", "stage2": "Stage-II (fine-tune on target)"}
    for ax, stage in zip(axes[0], stages):
        for n, (trial, curves) in enumerate(sorted(histories.items())):
            pts = curves.get(stage)
            if not pts:
                continue
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", markersize=3, linewidth=1.4, color=cmap(n % cmap.N), label=str(trial))
        ax.set_title(titles[stage], fontsize=10)
        ax.set_xlabel("epoch" if stage == "stage1" else "epoch of Stage-II")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, title="trial", fontsize=7, title_fontsize=8, loc="center left",
               bbox_to_anchor=(1.0, 0.5), ncol=1 if len(labels) <= 16 else 2)
    fig.suptitle("Training loss of the two stages", fontsize=11)
    fig.tight_layout()
    return _save(fig, out)


# -- SSBVER Fig. 4: pair distance distributions ---------------------------------------------------
def pair_distances(query_features: np.ndarray, gallery_features: np.ndarray, query_ids, gallery_ids,
                   query_cams=None, gallery_cams=None, max_pairs: int = 2_000_000,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances ``1 - cos`` of positive (same id) and negative (different id) query-gallery
    pairs. With cameras, same-id-same-camera pairs are junk and dropped (in the CityFlow validation
    split they include each query's own copy at distance 0). A class with more than ``max_pairs``
    pairs is subsampled with ``seed``."""
    q, g = _check_features(query_features, gallery_features)
    qid = np.asarray(query_ids).astype(str)
    gid = np.asarray(gallery_ids).astype(str)
    if len(qid) != len(q) or len(gid) != len(g):
        raise EvaluationInputError(f"ids ({len(qid)}, {len(gid)}) do not match features ({len(q)}, {len(g)})")
    dist = 1.0 - q @ g.T
    same = qid[:, None] == gid[None, :]
    valid = np.ones_like(same)
    if query_cams is not None and gallery_cams is not None:
        qc = np.asarray(query_cams).astype(str)
        gc = np.asarray(gallery_cams).astype(str)
        valid = ~(same & (qc[:, None] == gc[None, :]))
    pos = dist[same & valid]
    neg = dist[~same & valid]
    rng = np.random.default_rng(seed)
    if len(pos) > max_pairs:
        pos = rng.choice(pos, max_pairs, replace=False)
    if len(neg) > max_pairs:
        neg = rng.choice(neg, max_pairs, replace=False)
    return pos.astype(np.float64), neg.astype(np.float64)


def distance_stats(pos: np.ndarray, neg: np.ndarray, bins: int = 50) -> dict[str, float]:
    """Means / standard deviations of both distributions and their overlap: the overlapping
    coefficient ``sum_b min(p_b, n_b)`` of the two histograms (as probability masses) on shared bins."""
    if len(pos) == 0 or len(neg) == 0:
        raise EvaluationInputError(f"need positive and negative pairs, got {len(pos)} and {len(neg)}")
    edges = _edges(pos, neg, bins)
    p, _ = np.histogram(pos, edges)
    n, _ = np.histogram(neg, edges)
    overlap = float(np.minimum(p / p.sum(), n / n.sum()).sum())
    return {"pos_mean": float(np.mean(pos)), "pos_std": float(np.std(pos)), "neg_mean": float(np.mean(neg)),
            "neg_std": float(np.std(neg)), "overlap": overlap, "n_pos": int(len(pos)), "n_neg": int(len(neg))}


def _edges(pos: np.ndarray, neg: np.ndarray, bins: int) -> np.ndarray:
    lo = min(float(pos.min()), float(neg.min()))
    hi = max(float(pos.max()), float(neg.max()))
    if hi <= lo:
        hi = lo + 1e-6
    return np.linspace(lo, hi, bins + 1)


def distance_distribution_figure(pos: np.ndarray, neg: np.ndarray, out: str | os.PathLike, bins: int = 50,
                                 title: str = "Positive vs negative pair distances") -> Path:
    """SSBVER Fig. 4: histograms (densities) of positive- and negative-pair cosine distances of the
    normalised embeddings, with means, standard deviations and the overlap stated."""
    plt = _plt()
    s = distance_stats(pos, neg, bins)
    edges = _edges(pos, neg, bins)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.hist(neg, edges, density=True, alpha=0.55, color="#d73027",
            label=f"negative (different id): n={s['n_neg']}, $\\mu$={s['neg_mean']:.3f}, $\\sigma$={s['neg_std']:.3f}")
    ax.hist(pos, edges, density=True, alpha=0.55, color="#1a9850",
            label=f"positive (same id): n={s['n_pos']}, $\\mu$={s['pos_mean']:.3f}, $\\sigma$={s['pos_std']:.3f}")
    ax.axvline(s["pos_mean"], color="#1a9850", linestyle="--", linewidth=1)
    ax.axvline(s["neg_mean"], color="#d73027", linestyle="--", linewidth=1)
    ax.set_xlabel("cosine distance 1 - cos(f_q, f_g)")
    ax.set_ylabel("density")
    ax.set_title(f"{title}\nhistogram overlap = {s['overlap']:.3f} (0 = separated, 1 = identical)", fontsize=10)
    ax.legend(fontsize=7, loc="best", framealpha=0.9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


# -- SSBVER Fig. 6: input-gradient saliency -------------------------------------------------------
def saliency_maps(model, xq, xg) -> tuple[np.ndarray, np.ndarray, float]:
    """SSBVER Eq. 6 on normalised embeddings: the gradients of ``cos(f(I_q), f(I_g))`` with respect
    to both input images, reduced to ``max_c |grad|`` per pixel. Returns ``(m_q, m_g, cos)``."""
    import torch
    import torch.nn.functional as F

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # only the inputs need gradients
        p.requires_grad_(False)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        xq = xq.clone().requires_grad_(True)
        xg = xg.clone().requires_grad_(True)
        with torch.enable_grad():
            fq = model.extract(xq)
            fg = model.extract(xg)
            sim = F.cosine_similarity(fq.flatten(1), fg.flatten(1), dim=1).sum()
            gq, gg = torch.autograd.grad(sim, [xq, xg])
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    mq = gq.abs().amax(dim=1)[0].numpy()
    mg = gg.abs().amax(dim=1)[0].numpy()
    return mq, mg, float(sim.detach())


def _scale(m: np.ndarray) -> np.ndarray:
    # a robust upper bound so one hot pixel does not wash out the map
    hi = float(np.percentile(m, 99.5))
    return np.clip(m / hi, 0.0, 1.0) if hi > 0 else np.zeros_like(m)


def saliency_figure(model, query_path: str | os.PathLike, gallery_path: str | os.PathLike,
                    image_size: Sequence[int], out: str | os.PathLike, label: str = "") -> Path:
    """SSBVER Fig. 6: query and gallery images with the saliency of their similarity overlaid."""
    plt = _plt()
    xq, rq = load_image(query_path, image_size)
    xg, rg = load_image(gallery_path, image_size)
    mq, mg, sim = saliency_maps(model, xq, xg)
    cell_h = 2.3 * float(image_size[0]) / float(image_size[1])
    fig, axes = plt.subplots(1, 4, figsize=(10.4, cell_h + 0.9), layout="constrained")
    panels = [(rq, None, f"query\n{Path(query_path).name}"), (rq, _scale(mq), "query saliency $m_q$"),
              (rg, None, f"gallery (true match)\n{Path(gallery_path).name}"), (rg, _scale(mg), "gallery saliency $m_g$")]
    im = None
    for ax, (rgb, sal, title) in zip(axes, panels):
        if sal is None:
            ax.imshow(rgb)
        else:
            ax.imshow((0.35 * rgb).astype(np.uint8))
            im = ax.imshow(sal, cmap="inferno", alpha=0.75, vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Input-gradient saliency of cos(f(q), f(g)) = {sim:.3f}" + (f"  [{label}]" if label else ""), fontsize=10)
    fig.colorbar(im, ax=list(axes), shrink=0.7, label="|gradient| (scaled)")
    return _save(fig, out)
