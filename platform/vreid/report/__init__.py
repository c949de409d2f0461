"""Reports: the papers' tables (markdown) and figures (PNG) for one grid / ensemble, from MLflow.

:func:`build_report` writes ``<out>/report.md`` and ``<out>/figures/*.png`` and logs them as MLflow
artifacts of the ensemble run (or of the grid's parent run when there is no ensemble yet).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from vreid.errors import VreidError

FIGURE_FILES = {
    "retrieval": "retrieval.png",
    "heatmap": "heatmaps.png",
    "loss": "loss_curves.png",
    "distances": "distance_distribution.png",
    "saliency": "saliency.png",
}


def _read_manifest(path: str | os.PathLike):
    import pandas as pd

    from vreid.report.figures import check_manifest

    p = Path(path)
    if not p.is_file():
        raise VreidError(f"manifest not found: {p}")
    try:
        df = pd.read_parquet(p)
    except Exception as exc:  # pyarrow raises several types for a non-parquet file
        raise VreidError(f"{p}: not a readable parquet manifest: {exc}") from None
    check_manifest(df, str(p))
    return df


def _load_val(ensemble_dir: Path) -> dict[str, Any]:
    import numpy as np

    val = ensemble_dir / "val"
    out = {}
    for part in ("query", "gallery"):
        f = val / f"{part}_features.npy"
        if not f.is_file():
            raise VreidError(f"ensemble output {ensemble_dir}: missing val/{part}_features.npy")
        out[f"{part}_features"] = np.load(f)
        out[f"{part}_manifest"] = _read_manifest(val / f"{part}.parquet")
        if len(out[f"{part}_manifest"]) != len(out[f"{part}_features"]):
            raise VreidError(f"{f}: {len(out[f'{part}_features'])} rows but val/{part}.parquet has "
                             f"{len(out[f'{part}_manifest'])}")
    return out


def _heatmap_groups(gallery, n_ids: int = 3, per_id: int = 3, seed: int = 0) -> tuple[list[list[str]], list[str]]:
    """``n_ids`` vehicle ids with images from the most cameras; per id one image per camera (seeded),
    so each row of Fig. 7 shows one vehicle from different viewpoints."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ncam = gallery.groupby("vehicle_id")["camera"].nunique().sort_values(ascending=False, kind="stable")
    ids = list(ncam.index[:n_ids])
    groups, labels = [], []
    for vid in ids:
        rows = gallery[gallery["vehicle_id"] == vid]
        picks = []
        for cam, sub in rows.groupby("camera", sort=True):
            picks.append(sub["path"].iloc[int(rng.integers(len(sub)))])
            if len(picks) == per_id:
                break
        groups.append(picks)
        labels.append(f"id {vid}")
    return groups, labels


def _saliency_pair(val: Optional[dict[str, Any]], query, gallery, seed: int) -> tuple[str, str, str]:
    """A query and a true match: with features, the highest-ranked true match of a seeded query
    (junk excluded); otherwise a same-id gallery image from another camera."""
    import numpy as np

    from vreid.report.figures import _check_features, pick_queries, ranked_gallery

    q_ids = query["vehicle_id"].astype(str).to_numpy()
    q_cams = query["camera"].astype(str).to_numpy()
    g_ids = gallery["vehicle_id"].astype(str).to_numpy()
    g_cams = gallery["camera"].astype(str).to_numpy()
    i = pick_queries(q_ids, q_cams, g_ids, g_cams, 1, seed)[0]
    if val is not None:
        q, g = _check_features(val["query_features"], val["gallery_features"])
        sim = g @ q[i]
        order, is_true = ranked_gallery(sim, q_ids[i], q_cams[i], g_ids, g_cams)
        j = int(order[np.argmax(is_true)])
        how = f"rank {int(np.argmax(is_true)) + 1} true match of query id {q_ids[i]}"
    else:
        j = int(np.flatnonzero((g_ids == q_ids[i]) & (g_cams != q_cams[i]))[0])
        how = f"true match of query id {q_ids[i]}"
    return query["path"].iloc[i], gallery["path"].iloc[j], how


def _model_checkpoint(runs, tables: Optional[dict[str, Any]]) -> Optional[tuple[str, str]]:
    """``(checkpoint dir, trial)`` of the best model: the ensemble's first model, else the best
    selected trial's final checkpoint (tag ``checkpoint``)."""
    from vreid.report.tables import _trial_name, selected_trials

    for m in (tables or {}).get("models") or []:
        if m.get("checkpoint"):
            return str(m["checkpoint"]), str(m.get("trial_id", "?"))
    chosen = selected_trials(runs, 1)
    if not chosen.empty and "tags.checkpoint" in chosen.columns:
        r = chosen.iloc[0]
        if isinstance(r.get("tags.checkpoint"), str) and r["tags.checkpoint"]:
            return r["tags.checkpoint"], _trial_name(r)
    return None


def build_report(
    name: str,
    root: str | os.PathLike = "outputs/demo",
    tracking_uri: Optional[str] = None,
    ensemble_dir: Optional[str | os.PathLike] = None,
    out: Optional[str | os.PathLike] = None,
    model: Any = None,
    image_size: Optional[tuple[int, int]] = None,
    num_queries: int = 4,
    top_k: int = 5,
    seed: int = 0,
    log_artifacts: bool = True,
) -> Path:
    """Write ``<out or root>/report.md`` with every table and figure of grid / experiment ``name``.

    ``ensemble_dir`` defaults to the ``vreid.ensemble_dir`` tag of the experiment's ensemble run.
    ``model`` (with ``.extract`` and ``.backbone``; for the heat-map and saliency figures) defaults to
    the best model's checkpoint, loaded with ``load_model_for_inference``. Figures whose inputs do not
    exist yet (no ensemble run, no checkpoint) are listed in the report as not produced, with the reason.
    """
    from mlflow import MlflowClient

    from vreid import tracking
    from vreid.io import atomic_write_text
    from vreid.report import figures as F
    from vreid.report import tables as T

    uri = tracking_uri or tracking.default_tracking_uri(root)
    out_dir = Path(out or root)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    runs = T.experiment_runs(name, uri)
    ens_run = T.role_run_id(runs, "ensemble")
    grid_run = T.role_run_id(runs, "grid")
    if ensemble_dir is None and ens_run is not None:
        tag = runs.loc[runs["run_id"] == ens_run, "tags.vreid.ensemble_dir"]
        if len(tag) and isinstance(tag.iloc[0], str) and tag.iloc[0]:
            ensemble_dir = tag.iloc[0]
    ens_tables = T.load_ensemble_tables(ensemble_dir) if ensemble_dir is not None else None
    # the ensemble job writes val/ only when it had a validation split (not for a test-only run)
    has_val = ensemble_dir is not None and (Path(ensemble_dir) / "val").is_dir()
    val = _load_val(Path(ensemble_dir)) if has_val else None
    no_val = "the ensemble output has no val/ features" if ensemble_dir is not None else "no ensemble output found"

    sections = [T.grid_table(name, uri), T.stage_table(name, uri), T.ensemble_table(ens_tables),
                T.postprocess_table(ens_tables), T.efficiency_table(name, uri)]

    figs: list[tuple[str, Optional[Path], str]] = []  # (title, path or None, caption or reason)
    hist = F.loss_histories(name, uri)
    if hist:
        p = F.loss_curves_figure(hist, fig_dir / FIGURE_FILES["loss"])
        figs.append(("Training loss of both stages (VehicleNet Fig. 8)", p,
                     f"Per-epoch training loss of Stage-I (left) and Stage-II (right) for {len(hist)} trials."))
    else:
        figs.append(("Training loss of both stages (VehicleNet Fig. 8)", None, "no trial logged stage1/loss yet"))

    title_r = "Ranked retrieval (VehicleNet Fig. 6)"
    title_d = "Positive vs negative pair distances (SSBVER Fig. 4)"
    if val is not None:
        p = F.retrieval_figure(val["query_features"], val["gallery_features"], val["query_manifest"],
                               val["gallery_manifest"], fig_dir / FIGURE_FILES["retrieval"], num_queries, top_k, seed)
        figs.append((title_r, p, f"Top-{top_k} gallery images of {num_queries} validation queries ranked by the "
                     "fused ensemble features; green = true match, red = false match, junk excluded."))
        qm, gm = val["query_manifest"], val["gallery_manifest"]
        pos, neg = F.pair_distances(val["query_features"], val["gallery_features"], qm["vehicle_id"], gm["vehicle_id"],
                                    qm["camera"], gm["camera"], seed=seed)
        s = F.distance_stats(pos, neg)
        p = F.distance_distribution_figure(pos, neg, fig_dir / FIGURE_FILES["distances"],
                                           title="Query-gallery cosine distances, fused ensemble features")
        figs.append((title_d, p, f"Positive pairs: mean {s['pos_mean']:.3f} (sd {s['pos_std']:.3f}, n={s['n_pos']}); "
                     f"negative pairs: mean {s['neg_mean']:.3f} (sd {s['neg_std']:.3f}, n={s['n_neg']}); "
                     f"histogram overlap {s['overlap']:.3f}. Same-id same-camera pairs are junk and excluded."))
    else:
        figs += [(title_r, None, no_val), (title_d, None, no_val)]

    title_h = "Activation heat maps (VehicleNet Fig. 7)"
    title_s = "Query-gallery saliency (SSBVER Fig. 6)"
    model_label = "given model"
    if model is None:
        ck = _model_checkpoint(runs, ens_tables)
        if ck is not None:
            from vreid.train.checkpoint import load_model_for_inference

            model, info = load_model_for_inference(ck[0])
            image_size = image_size or tuple(info["image_size"])
            model_label = f"trial {ck[1]}"
    if model is not None and image_size is None:
        raise VreidError("build_report: a model was given without image_size ([h, w])")
    manifests = _image_manifests(val, runs)
    if model is not None and manifests is not None:
        query, gallery = manifests
        groups, labels = _heatmap_groups(gallery, seed=seed)
        p = F.heatmap_figure(model, groups, image_size, fig_dir / FIGURE_FILES["heatmap"], labels)
        figs.append((title_h, p, f"Channel mean of the last feature map of {model_label}, upsampled and overlaid; "
                     "each row is one vehicle id seen by different cameras."))
        qp, gp, how = _saliency_pair(val, query, gallery, seed)
        p = F.saliency_figure(model, qp, gp, image_size, fig_dir / FIGURE_FILES["saliency"], label=model_label)
        figs.append((title_s, p, f"Gradient of the cosine similarity w.r.t. the query and gallery pixels "
                     f"(SSBVER Eq. 6), {model_label}; pair: {how}."))
    else:
        reason = "no model checkpoint found" if model is None else "no validation manifests found"
        figs += [(title_h, None, reason), (title_s, None, reason)]

    lines = [f"# vreid report: {name}", "", f"MLflow: `{uri}`, experiment `{name}`."
             + (f" Ensemble output: `{ensemble_dir}`." if ensemble_dir else ""), "", "## Tables", ""]
    for s in sections:
        lines += [s, ""]
    lines += ["## Figures", ""]
    for title, path, caption in figs:
        lines.append(f"### {title}")
        lines.append("")
        if path is None:
            lines.append(f"_Not produced: {caption}._")
        else:
            lines.append(f"![{title}](figures/{path.name})")
            lines.append("")
            lines.append(f"*{caption}*")
        lines.append("")
    report = atomic_write_text(out_dir / "report.md", "\n".join(lines))

    target = ens_run or grid_run
    if log_artifacts and target is not None:
        client = MlflowClient(uri)
        client.log_artifact(target, str(report), "report")
        for _, path, _ in figs:
            if path is not None:
                client.log_artifact(target, str(path), "report/figures")
    return report


def _image_manifests(val: Optional[dict[str, Any]], runs):
    """Validation query / gallery manifests: the ensemble's, else the trials' ``data.val_*`` params."""
    if val is not None:
        return val["query_manifest"], val["gallery_manifest"]
    for col_q, col_g in (("params.data.val_query", "params.data.val_gallery"),):
        if col_q in runs.columns and col_g in runs.columns:
            for _, r in runs.iterrows():
                q, g = r.get(col_q), r.get(col_g)
                if isinstance(q, str) and isinstance(g, str) and Path(q).is_file() and Path(g).is_file():
                    return _read_manifest(q), _read_manifest(g)
    return None


__all__ = ["build_report", "FIGURE_FILES"]
