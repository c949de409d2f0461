"""One configurable post-processing chain: VehicleNet Fig. 5 / Table VI as a single command.

Steps, in the paper's order (each on or off in YAML):

1. ``base``: the first model's features (always evaluated first: Table VI's first column);
2. ``crop_average``: average with the features of the box-cropped images (Sec. IV-C "Cropped Images");
   refused when no image has a box (``vreid data detect`` writes Mask R-CNN boxes);
3. ``ensemble``: :func:`vreid.evaluate.postprocess.fuse_features` (Sec. IV-C "Model Ensemble": per-model
   L2 norm, concatenation, x 1/sqrt(n) so the fused rows have unit norm), the ensemble job's fusion too;
4. ``track_fusion``: add a weighted track mean to each gallery feature (not in the paper);
5. ``query_expansion``: DBSCAN over the queries, each clustered query -> mean of the *other* queries of
   its cluster (Sec. IV-C); ``eps`` is a Euclidean radius between L2-normalised query features;
6. ``camera_verification``: drop / penalise gallery items from the query's camera cluster (k-means of a
   camera model's features; ``source: manifest`` only where every camera is known);
7. ``temporal``: drop gallery items outside [t - tau, t + tau] (times from the manifests or CSVs);
8. ``re_ranking``: k-reciprocal re-ranking (computed on features, block by block).

Every step keeps unit-norm features, the norm the Euclidean re-ranking compares on.
Camera verification and temporal filtering are masks: once enabled they are applied to every later
distance (the re-ranked one included), so the table's numbers are cumulative as in Table VI.
Only query-by-gallery distances are made densely (1,052 x 18,290 at CityFlow test scale); re-ranking
holds its kNN structure, never an (N_q + N_g)^2 matrix.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vreid.errors import ConfigError, EvaluationInputError
from vreid.evaluate import postprocess as pp
from vreid.evaluate.metrics import DistanceBlocks, evaluate_rank
from vreid.evaluate.rerank import re_ranking_features


@dataclass
class QueryExpansionConfig:
    enabled: bool = False
    eps: float = 0.5  # Euclidean radius between L2-normalised query features (in [0, 2])
    min_samples: int = 2
    include_self: bool = False  # True: cluster mean with the query itself (not the paper's "other queries")


@dataclass
class CameraVerificationConfig:
    enabled: bool = False
    mode: str = "drop"
    penalty: float = 1.0
    source: str = "manifest"  # "manifest": the manifests' camera column; "clusters": k-means of camera features
    n_clusters: int = 40
    seed: int = 0


@dataclass
class ReRankingConfig:
    enabled: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3


@dataclass
class TemporalConfig:
    enabled: bool = False
    tau: float = 1000.0  # in the timestamps' unit (VeRi-776: frames; a CSV: whatever it holds)
    # timestamps CSV(s) joined to the manifests (header image_name,timestamp or track,timestamp);
    # empty: the manifests' own timestamp column (VeRi-776 frame stamps, VeRi-Wild times)
    csv: list[str] = field(default_factory=list)


@dataclass
class TrackFusionConfig:
    enabled: bool = False
    weight: float = 1.0


@dataclass
class PostProcessConfig:
    """The chain's typed config; :meth:`from_yaml` rejects unknown keys by name."""

    metric: str = "cosine"
    remove_same_camera: bool = True
    max_rank: int = 50
    crop_average: bool = False
    ensemble: bool = False
    query_expansion: QueryExpansionConfig = field(default_factory=QueryExpansionConfig)
    camera_verification: CameraVerificationConfig = field(default_factory=CameraVerificationConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    track_fusion: TrackFusionConfig = field(default_factory=TrackFusionConfig)
    re_ranking: ReRankingConfig = field(default_factory=ReRankingConfig)

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "config") -> "PostProcessConfig":
        return _build(cls, data or {}, source, "")

    @classmethod
    def from_yaml(cls, path) -> "PostProcessConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: chain config not found")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(data, str(path))

    def validate(self, source: str = "config") -> None:
        if self.metric not in ("cosine", "euclidean"):
            raise ConfigError(f"{source}: metric must be 'cosine' or 'euclidean', got {self.metric!r}")
        if self.camera_verification.mode not in ("drop", "penalty"):
            raise ConfigError(f"{source}: camera_verification.mode must be 'drop' or 'penalty'")
        if self.camera_verification.source not in ("manifest", "clusters"):
            raise ConfigError(f"{source}: camera_verification.source must be 'manifest' or 'clusters'")


_ALIASES = {"lambda": "lambda_value"}


def _build(cls, data: dict, source: str, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.')}' must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = _ALIASES.get(key, key)
        if name not in known:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (known: {', '.join(sorted(known))})")
        f = known[name]
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if hasattr(default, "__dataclass_fields__"):
            if isinstance(value, bool):
                value = {"enabled": value}
            sub = dict(value or {})
            sub.setdefault("enabled", True)  # listing a step's parameters turns it on
            kwargs[name] = _build(type(default), sub, source, f"{prefix}{key}.")
        else:
            expected = type(default)
            if expected is list and isinstance(value, str):
                value = [value]
            if expected is list and isinstance(value, list) and not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: '{prefix}{key}' must be a list of paths, got {value!r}")
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"{source}: '{prefix}{key}' must be {expected.__name__}, got {value!r}")
            kwargs[name] = value
    obj = cls(**kwargs)
    if isinstance(obj, PostProcessConfig):
        obj.validate(source)
    return obj


def _as_list(x) -> list[np.ndarray]:
    if x is None:
        return []
    if isinstance(x, np.ndarray):
        return [x]
    return [np.asarray(v) for v in x]


def _column(df, name: str, n: int, default=None) -> np.ndarray | None:
    if df is None or name not in df.columns:
        return None if default is None else np.full(n, default)
    col = df[name]
    if name in ("timestamp", "track"):  # nullable columns (pandas Int64 / float with NA): NA -> NaN
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    return col.to_numpy()


NO_BOX_MESSAGE = ("crop_average is on but no query or gallery image has a box (manifest column 'bbox'): "
                  "re-detect them with `vreid data detect MANIFEST --weights MASKRCNN.pth --out ...`, "
                  "or switch crop_average off")


def _timestamps(df, n: int, csv_paths) -> np.ndarray:
    """Per row: the time from the timestamps CSV(s) if listed there, else the manifest's; NaN unknown."""
    if df is not None and csv_paths:
        from vreid.data.cityflow import join_timestamps

        df = join_timestamps(df, csv_paths)
    t = _column(df, "timestamp", n)
    return np.full(n, np.nan) if t is None else np.asarray(t, dtype=np.float64)


def boxed_rows(df) -> int:
    """Rows of ``df`` with a 4-number box (0 when there is no ``bbox`` column)."""
    if df is None or "bbox" not in df.columns:
        return 0
    return sum(1 for b in df["bbox"] if b is not None and not (isinstance(b, float) and np.isnan(b)) and len(b) == 4)


def run_chain(
    qf,
    gf,
    q_df,
    g_df,
    config: PostProcessConfig,
    evaluate: bool = True,
    q_crop=None,
    g_crop=None,
    q_camera_features=None,
    g_camera_features=None,
) -> tuple[np.ndarray, list[dict]]:
    """Apply the enabled steps; return ``(final_distance (Q, G) float32, table)``.

    ``qf`` / ``gf``: one feature matrix or a list (one per model, for the ensemble step); ``q_crop`` /
    ``g_crop``: the same for box-cropped images (crop step). ``q_df`` / ``g_df``: manifests in the
    vreid schema (``vehicle_id``, ``camera``, optional ``timestamp`` and ``track``). The table has one row
    per evaluated step (mAP, CMC@1, CMC@5, mINP), filled when ``evaluate`` and every query id is >= 0.
    """
    models_q, models_g = _as_list(qf), _as_list(gf)
    if not models_q or len(models_q) != len(models_g):
        raise EvaluationInputError("qf and gf must hold the same number (>= 1) of models' features")
    crops_q, crops_g = _as_list(q_crop), _as_list(g_crop)
    n_q, n_g = len(models_q[0]), len(models_g[0])
    for name, mats, n in (("qf", models_q, n_q), ("gf", models_g, n_g), ("q_crop", crops_q, n_q),
                          ("g_crop", crops_g, n_g)):
        for m in mats:
            if m.ndim != 2 or m.shape[0] != n:
                raise EvaluationInputError(f"{name}: every model's features must be ({n}, d), got {m.shape}")
    if q_df is not None and len(q_df) != n_q:
        raise EvaluationInputError(f"q_df has {len(q_df)} rows but qf has {n_q}")
    if g_df is not None and len(g_df) != n_g:
        raise EvaluationInputError(f"g_df has {len(g_df)} rows but gf has {n_g}")

    q_ids = _column(q_df, "vehicle_id", n_q)
    g_ids = _column(g_df, "vehicle_id", n_g)
    q_cams = _column(q_df, "camera", n_q, default=-1)
    g_cams = _column(g_df, "camera", n_g, default=-1)
    n_boxed = boxed_rows(q_df) + boxed_rows(g_df)
    if config.crop_average and n_boxed == 0:
        # without a box the "crop" is the image itself and the step would average a feature with itself
        raise EvaluationInputError(NO_BOX_MESSAGE)
    cv = config.camera_verification
    if cv.enabled and cv.source == "manifest":
        # the manifests' cameras are ground truth on validation splits and unknown (-1) on the CityFlow
        # test set, where verification by them would silently do nothing: refuse, point to clusters
        for what, cams, n in (("query", q_cams, n_q), ("gallery", g_cams, n_g)):
            unknown = int(np.sum(np.asarray(cams) < 0))
            if unknown:
                raise EvaluationInputError(
                    f"camera_verification.source is 'manifest' but the {what} manifest's camera is unknown "
                    f"(-1 or no 'camera' column) for {unknown} of {n} images: use source: clusters with a "
                    "camera model's features (a model trained with data.label_by: camera)")
    if cv.enabled and cv.source == "clusters" and (q_camera_features is None or g_camera_features is None):
        raise EvaluationInputError("camera_verification.source is 'clusters' but no camera features given "
                                   "(a camera model: trained with data.label_by: camera)")
    qt = gt = None
    if config.temporal.enabled:
        qt, gt = _timestamps(q_df, n_q, config.temporal.csv), _timestamps(g_df, n_g, config.temporal.csv)
        for what, t in (("query", qt), ("gallery", gt)):
            if np.isnan(t).all():
                raise EvaluationInputError(
                    f"temporal is on but no {what} image has a timestamp: give manifests with a 'timestamp' "
                    "column (VeRi-776 frame stamps, VeRi-Wild times) or temporal.csv: a CSV "
                    "'image_name,timestamp' or 'track,timestamp' joined to the manifests (the CityFlow "
                    "release has no times)")
    can_eval = evaluate and q_ids is not None and g_ids is not None and bool(np.all(q_ids >= 0))
    table: list[dict] = []

    def record(step: str, dist: np.ndarray) -> None:
        if not can_eval:
            table.append({"step": step})
            return
        kw = dict(max_rank=max(5, config.max_rank), remove_same_camera=config.remove_same_camera)
        r = evaluate_rank(dist, q_ids, g_ids, q_cams, g_cams, **kw)
        top = evaluate_rank(dist, q_ids, g_ids, q_cams, g_cams, ap_mode="top100", **kw)  # AI City's mAP@100
        table.append({"step": step, "mAP": r["mAP"], "mAP_top100": top["mAP"], "CMC@1": float(r["cmc"][0]),
                      "CMC@5": float(r["cmc"][4]), "mINP": r["mINP"], "queries": r["num_queries"]})

    def fuse(qs, gs, crops_q_, crops_g_):
        # Sec. IV-C "Model Ensemble" (and "Cropped Images"): the same fusion as the ensemble job; the
        # fused rows have unit norm, the norm query expansion and track fusion return and the
        # Euclidean re-ranking then compares on one scale.
        return (pp.fuse_features(qs, crops_q_ or None), pp.fuse_features(gs, crops_g_ or None))

    def distance(a, b) -> np.ndarray:
        return DistanceBlocks(a, b, config.metric).block(0, len(a)).astype(np.float32)

    cq, cg = fuse(models_q[:1], models_g[:1], [], [])
    record("base", distance(cq, cg))
    use_crops = config.crop_average
    if use_crops:
        if len(crops_q) != len(models_q) or len(crops_g) != len(models_g):
            raise EvaluationInputError("crop_average is on but q_crop/g_crop do not hold one matrix per model")
        cq, cg = fuse(models_q[:1], models_g[:1], crops_q[:1], crops_g[:1])
        record(f"crop_average (boxes: {n_boxed} of {n_q + n_g} images)", distance(cq, cg))
    if config.ensemble:
        cq, cg = fuse(models_q, models_g, crops_q if use_crops else [], crops_g if use_crops else [])
        record(f"ensemble ({len(models_q)} models)", distance(cq, cg))
    if config.track_fusion.enabled:
        tracks = _column(g_df, "track", n_g)
        if tracks is None:
            raise EvaluationInputError("track_fusion is on but the gallery manifest has no 'track' column")
        cg = pp.track_fusion(cg, np.asarray(tracks, dtype=np.float64), config.track_fusion.weight)
        record("track_fusion", distance(cq, cg))
    if config.query_expansion.enabled:
        cq = pp.query_expansion_dbscan(cq, eps=config.query_expansion.eps,
                                       min_samples=config.query_expansion.min_samples,
                                       include_self=config.query_expansion.include_self)
        qe = config.query_expansion
        record(f"query_expansion (eps={qe.eps:g}{', include_self' if qe.include_self else ''})", distance(cq, cg))

    masks: list = []
    if cv.enabled:
        if cv.source == "clusters":
            labels = pp.camera_clusters(np.concatenate([np.asarray(q_camera_features),
                                                        np.asarray(g_camera_features)]), cv.n_clusters, cv.seed)
            vq, vg = labels[:n_q], labels[n_q:]
        else:
            vq, vg = q_cams, g_cams
        masks.append(lambda d: pp.camera_verification(d, vq, vg, mode=cv.mode, penalty=cv.penalty))
        record(f"camera_verification ({cv.mode}, {cv.source})", masks[-1](distance(cq, cg)))
    if config.temporal.enabled:
        tau = config.temporal.tau
        masks.append(lambda d: pp.temporal_filter(d, qt, gt, tau))
        d = distance(cq, cg)
        for m in masks:
            d = m(d)
        record(f"temporal (tau={tau:g}; times known: {int(np.sum(~np.isnan(qt)))}/{n_q} queries, "
               f"{int(np.sum(~np.isnan(gt)))}/{n_g} gallery)", d)

    rr = config.re_ranking
    if rr.enabled:
        dist = re_ranking_features(cq, cg, k1=rr.k1, k2=rr.k2, lambda_value=rr.lambda_value)
        step = f"re_ranking (k1={rr.k1}, k2={rr.k2}, lambda={rr.lambda_value:g})"
    else:
        dist = distance(cq, cg)
        step = None
    for m in masks:
        dist = m(dist)
    if step:
        record(step, dist)
    return dist.astype(np.float32, copy=False), table


def format_table(table: Sequence[dict]) -> str:
    """Plain-text table of the chain's steps (percentages like the paper's Table VI)."""
    header = f"{'step':<44} {'mAP%':>7} {'mAP@100%':>8} {'CMC@1%':>7} {'CMC@5%':>7} {'mINP%':>7}"
    lines = [header, "-" * len(header)]
    for row in table:
        if "mAP" in row:
            lines.append(f"{row['step']:<44} {100 * row['mAP']:7.2f} {100 * row['mAP_top100']:8.2f} "
                         f"{100 * row['CMC@1']:7.2f} {100 * row['CMC@5']:7.2f} {100 * row['mINP']:7.2f}")
        else:
            lines.append(f"{row['step']:<44} {'-':>7} {'-':>8} {'-':>7} {'-':>7} {'-':>7}")
    return "\n".join(lines)


__all__ = ["PostProcessConfig", "run_chain", "format_table", "boxed_rows", "NO_BOX_MESSAGE"]
