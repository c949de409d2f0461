"""Dataset evaluation protocols (FORMATS.md): VeRi-776, CityFlow validation, VehicleID, VeRi-Wild.

Each runner takes features plus manifests (vreid schema: ``vehicle_id``, ``camera``, ``image_name``)
and returns a list of table rows ``{"protocol", "setting", "mAP", "CMC@1", "CMC@5", "mINP", ...}``.

* VeRi-776 and CityFlow validation: same-id-same-camera gallery images are junk.
* VeRi-Wild: ``same_camera="keep"`` (the dataset authors' protocol, nothing junk) or ``"remove"``
  (fast-reid's), recorded in the row's ``same_camera``.
* VehicleID: no cameras, nothing junk; per draw one random image per id is the gallery and all the
  others are queries; ``n_draws`` (10) draws by :func:`vehicleid_gallery_picks` (``default_rng([seed,
  draw])``, one ``integers(n)`` per id in ascending id order over the id's images sorted by
  ``image_name``); mean and std over draws.
"""

from __future__ import annotations

import numpy as np

from vreid.data.vehicleid import vehicleid_gallery_picks  # the one draw rule (the reader uses it too)

from vreid.errors import EvaluationInputError
from vreid.evaluate.metrics import evaluate_features

PROTOCOLS = ("veri776", "cityflow", "vehicleid", "veriwild")


def _ids(df, name: str) -> tuple[np.ndarray, np.ndarray]:
    for col in ("vehicle_id", "camera"):
        if col not in df.columns:
            raise EvaluationInputError(f"{name} manifest has no '{col}' column")
    return df["vehicle_id"].to_numpy(), df["camera"].to_numpy()


def _row(protocol: str, setting: str, res: dict, **extra) -> dict:
    row = {"protocol": protocol, "setting": setting, "mAP": res["mAP"], "CMC@1": float(res["cmc"][0]),
           "CMC@5": float(res["cmc"][4]), "CMC@10": float(res["cmc"][9]), "mINP": res["mINP"],
           "queries": res["num_queries"], "skipped": res["num_skipped"]}
    row.update(extra)
    return row


def evaluate_query_gallery(protocol: str, qf, gf, q_df, g_df, remove_same_camera: bool,
                           setting: str = "", metric: str = "cosine", ap_mode: str = "standard") -> list[dict]:
    q_pids, q_cams = _ids(q_df, "query")
    g_pids, g_cams = _ids(g_df, "gallery")
    if np.any(q_pids < 0):
        raise EvaluationInputError(f"{protocol}: the query manifest has unknown ids (-1): it is not an "
                                   "evaluation split (CityFlow test labels are not public)")
    res = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=metric, max_rank=50,
                            remove_same_camera=remove_same_camera, ap_mode=ap_mode)
    return [_row(protocol, setting, res, same_camera="remove" if remove_same_camera else "keep",
                 ap_mode=ap_mode)]


def veri776(qf, gf, q_df, g_df, **kw) -> list[dict]:
    """VeRi-776: junk = same id and same camera as the query."""
    return evaluate_query_gallery("veri776", qf, gf, q_df, g_df, True, "test", **kw)


def cityflow(qf, gf, q_df, g_df, **kw) -> list[dict]:
    """CityFlow validation split (VehicleNet): the query's own copy in the gallery is junk (same id+camera)."""
    return evaluate_query_gallery("cityflow", qf, gf, q_df, g_df, True, "validation", **kw)


def veriwild(qf, gf, q_df, g_df, same_camera: str = "keep", split: str = "", **kw) -> list[dict]:
    """VeRi-Wild small/medium/large with the named same-camera option."""
    if same_camera not in ("keep", "remove"):
        raise EvaluationInputError(f"same_camera must be 'keep' or 'remove', got {same_camera!r}")
    return evaluate_query_gallery("veriwild", qf, gf, q_df, g_df, same_camera == "remove", split, **kw)


def vehicleid_draw(df, seed: int, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, gallery rows) of one VehicleID draw (:func:`vehicleid_gallery_picks`); independent of
    the manifest's row order."""
    names = df["image_name"].astype(str).to_numpy() if "image_name" in df.columns else np.arange(len(df)).astype(str)
    ids = df["vehicle_id"].to_numpy()
    order = np.lexsort((names, ids))  # by id, then name: the draw does not depend on manifest order
    _, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
    pick = starts + vehicleid_gallery_picks(counts, seed, draw)
    gallery = np.sort(order[pick])
    query = np.setdiff1d(np.arange(len(df)), gallery)
    return query, gallery


def vehicleid(feats, df, setting: str = "", n_draws: int = 10, seed: int = 0, metric: str = "cosine",
              ap_mode: str = "standard") -> list[dict]:
    """VehicleID small/medium/large: mean and std over ``n_draws`` seeded gallery draws."""
    if "vehicle_id" not in df.columns:
        raise EvaluationInputError("vehicleid manifest has no 'vehicle_id' column")
    feats = np.asarray(feats)
    if len(feats) != len(df):
        raise EvaluationInputError(f"vehicleid: {len(feats)} feature rows for {len(df)} manifest rows")
    pids = df["vehicle_id"].to_numpy()
    rows = []
    for d in range(n_draws):
        q, g = vehicleid_draw(df, seed, d)
        res = evaluate_features(feats[q], feats[g], pids[q], pids[g], np.zeros(len(q), np.int64),
                                np.ones(len(g), np.int64), metric=metric, remove_same_camera=False,
                                ap_mode=ap_mode)
        rows.append(_row("vehicleid", setting, res, draw=d))
    out = {"protocol": "vehicleid", "setting": setting, "draws": n_draws, "seed": seed}
    for key in ("mAP", "CMC@1", "CMC@5", "CMC@10", "mINP"):
        vals = np.array([r[key] for r in rows])
        out[key] = float(vals.mean())
        out[key + "_std"] = float(vals.std(ddof=0))
    out["queries"] = rows[0]["queries"]
    return [out]


def format_rows(rows: list[dict]) -> str:
    """A plain-text table (percent) of protocol rows."""
    head = f"{'protocol':<10} {'setting':<12} {'mAP%':>14} {'CMC@1%':>14} {'CMC@5%':>14} {'mINP%':>8} {'queries':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        def cell(k):
            s = f"{100 * r[k]:.2f}"
            return s + (f"±{100 * r[k + '_std']:.2f}" if k + "_std" in r else "")
        extra = f" same_camera={r['same_camera']}" if "same_camera" in r else ""
        lines.append(f"{r['protocol']:<10} {r['setting'] or '-':<12} {cell('mAP'):>14} {cell('CMC@1'):>14} "
                     f"{cell('CMC@5'):>14} {100 * r['mINP']:8.2f} {r['queries']:>8}{extra}")
    return "\n".join(lines)


__all__ = ["PROTOCOLS", "veri776", "cityflow", "veriwild", "vehicleid", "vehicleid_draw", "vehicleid_gallery_picks", "format_rows"]
