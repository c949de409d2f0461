"""The papers' tables as markdown, read back from MLflow (and the ensemble's ``tables.json``).

* :func:`grid_table` - per-trial validation results of a grid (the search VehicleNet V-A runs before
  "we select 8 best models on the validation set").
* :func:`stage_table` - Stage-I vs Stage-II (VehicleNet Table V), per selected trial: the validation
  mAP / Rank@1 at the last Stage-I epoch and at the end of Stage-II.
* :func:`ensemble_table` - the single best model vs the ensemble (VehicleNet sec. V-B, Fig. 5).
* :func:`postprocess_table` - the post-processing ablation (VehicleNet Table VI).
* :func:`efficiency_table` - parameters, ms/image at batch 1, images/s at batch B, peak memory and
  feature dims per model (SSBVER Table 1), with the device and library versions they were measured on.

Every function returns a markdown string that starts with its ``### `` heading (``TABLE_TITLES``), so
``report.md`` and its tests can find each table. Metrics are stored as fractions; tables print percent.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any, Iterable, Optional

from vreid.errors import VreidError

TABLE_TITLES = {
    "grid": "Grid: per-trial validation results",
    "stages": "Stage-I vs Stage-II (VehicleNet Table V)",
    "ensemble": "Single best model vs ensemble",
    "postprocess": "Post-processing ablation (VehicleNet Table VI)",
    "efficiency": "Efficiency per model (SSBVER Table 1)",
}

ENSEMBLE_METRICS = (("mAP", "mAP (%)"), ("mAP_top100", "mAP@100 (%)"), ("rank1", "Rank@1 (%)"),
                    ("rank5", "Rank@5 (%)"), ("mINP", "mINP (%)"))
TABLES_FILE = "tables.json"


# -- formatting -----------------------------------------------------------------------------------
def pct(value: Any) -> str:
    """A fraction as a percentage with two decimals (the papers' convention); blanks for missing."""
    v = _num(value)
    return "" if v is None else f"{100.0 * v:.2f}"


def fmt(value: Any, digits: int = 2) -> str:
    v = _num(value)
    if v is None:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    if float(v).is_integer() and abs(v) >= 1:
        return str(int(v))
    return f"{v:.{digits}f}"


def _num(value: Any) -> Optional[float]:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def markdown_table(header: list[str], rows: Iterable[list[Any]]) -> str:
    """A GitHub-flavoured markdown table; ``|`` inside cells is escaped so a value never adds a column."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _section(key: str, body: str, note: str = "") -> str:
    out = f"### {TABLE_TITLES[key]}\n\n"
    if note:
        out += note.strip() + "\n\n"
    return out + body.strip() + "\n"


# -- MLflow access --------------------------------------------------------------------------------
def experiment_runs(experiment: str, tracking_uri: str):
    """All runs of ``experiment`` (a pandas DataFrame from ``mlflow.search_runs``)."""
    from vreid.tracking import runs_dataframe

    return runs_dataframe(experiment, tracking_uri)


def trial_runs(runs) -> Any:
    """The trial (child) runs: everything that is neither the grid parent nor an ensemble run."""
    role = runs["tags.vreid.role"].fillna("") if "tags.vreid.role" in runs.columns else None
    if role is None:
        return runs
    return runs[~role.isin(["grid", "ensemble", "report"])]


def role_run_id(runs, role: str) -> Optional[str]:
    """The newest run tagged ``vreid.role=<role>`` (or None)."""
    if "tags.vreid.role" not in runs.columns:
        return None
    sel = runs[runs["tags.vreid.role"].fillna("") == role]
    if sel.empty:
        return None
    return str(sel.sort_values("start_time", ascending=False).iloc[0]["run_id"])


def selected_trials(runs, top_k: int = 8) -> Any:
    """Trials tagged ``vreid.selected=true`` (sorted by their selection rank); if none are tagged,
    the ``top_k`` best finished trials by final validation mAP."""
    trials = trial_runs(runs)
    if "tags.vreid.selected" in trials.columns:
        sel = trials[trials["tags.vreid.selected"].fillna("") == "true"]
        if not sel.empty:
            if "tags.vreid.selected_rank" in sel.columns:
                rank = sel["tags.vreid.selected_rank"].map(lambda v: _num(v) if _num(v) is not None else 1e9)
                return sel.assign(_rank=rank).sort_values("_rank").drop(columns="_rank")
            return sel.sort_values("metrics.val_mAP", ascending=False)
    if "metrics.val_mAP" not in trials.columns:
        return trials.iloc[0:0]
    done = trials[trials["metrics.val_mAP"].notna()]
    return done.sort_values("metrics.val_mAP", ascending=False).head(top_k)


def _trial_name(row) -> str:
    for key in ("tags.vreid.trial_id", "tags.mlflow.runName"):
        v = row.get(key)
        if isinstance(v, str) and v:
            return v
    return str(row["run_id"])[:8]


# -- the tables -----------------------------------------------------------------------------------
def grid_table(experiment: str, tracking_uri: str) -> str:
    """Per-trial validation results, best first (:func:`vreid.tracking.compare_table`).

    Only trial runs are listed (not the ensemble / report runs); config columns are the keys that
    differ between trials, plus the backbone and recipe.
    """
    from vreid.tracking import compare_table

    table = compare_table(experiment, tracking_uri)
    trial_ids = set(trial_runs(experiment_runs(experiment, tracking_uri))["run_id"])
    table = table[table["run_id"].isin(trial_ids)].reset_index(drop=True)
    if table.empty:
        raise VreidError(f"MLflow experiment '{experiment}' has no trial runs yet")
    fixed = {"trial", "val_mAP", "val_rank1", "val_rank5", "val_mINP", "params_m", "ms_per_image_b1",
             "images_per_s", "peak_mem_mb", "feat_dim", "selected", "status", "run_id"}
    config_cols = [c for c in table.columns if c not in fixed
                   and (c in ("model.backbone", "recipe") or table[c].astype(str).nunique() > 1)]
    header = ["trial"] + config_cols + ["mAP (%)", "Rank@1 (%)", "Rank@5 (%)", "mINP (%)", "selected", "status"]
    rows = []
    for _, r in table.iterrows():
        rows.append([r["trial"]] + [_param(r[c]) for c in config_cols]
                    + [pct(r["val_mAP"]), pct(r["val_rank1"]), pct(r["val_rank5"]), pct(r["val_mINP"]),
                       "yes" if r["selected"] else "", r["status"]])
    note = (f"Experiment `{experiment}`: {len(table)} trials, sorted by the final validation mAP "
            f"(the end of the last stage). Config columns are the swept keys.")
    return _section("grid", markdown_table(header, rows), note)


def _param(value: Any) -> str:
    # params are stored as strings: print them as logged (``0.01``, not a reformatted float)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def stage_results(client, run_id: str, stage1_epochs: int) -> dict[str, dict[str, Optional[float]]]:
    """Validation metrics at the end of Stage-I and at the end of training for one trial run.

    Steps are global epochs (Stage-II continues after Stage-I), so the Stage-I result is the last
    logged value with ``step <= stage1_epochs`` and the final result the one with the largest step.
    """
    out: dict[str, dict[str, Optional[float]]] = {"stage1": {}, "final": {}}
    for key in ("val_mAP", "val_rank1", "val_rank5", "val_mINP"):
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        s1 = [m for m in hist if m.step <= stage1_epochs]
        out["stage1"][key] = s1[-1].value if s1 else None
        out["final"][key] = hist[-1].value if hist and hist[-1].step > stage1_epochs else None
    return out


def stage_table(experiment: str, tracking_uri: str, top_k: int = 8) -> str:
    """VehicleNet Table V on the validation split: Stage-I vs Stage-II of each selected trial.

    The paper reports this on the private test set (its validation images were used for fine-tuning);
    we have no test labels, so it is the validation split, which Stage-II did not train on.
    """
    from mlflow import MlflowClient

    runs = experiment_runs(experiment, tracking_uri)
    chosen = selected_trials(runs, top_k)
    client = MlflowClient(tracking_uri)
    header = ["trial", "backbone", "stage", "epoch", "mAP (%)", "Rank@1 (%)", "Rank@5 (%)", "mINP (%)"]
    rows, deltas, single_stage = [], [], []
    for _, r in chosen.iterrows():
        name = _trial_name(r)
        e1 = _num(r.get("params.stage1.epochs"))
        recipe = r.get("params.recipe")
        if e1 is None:
            raise VreidError(f"MLflow run {r['run_id']} (trial {name}): missing param 'stage1.epochs'")
        if isinstance(recipe, str) and recipe != "vehiclenet":
            single_stage.append(name)
            continue
        e1 = int(e1)
        e2 = _num(r.get("params.stage2.epochs"))
        res = stage_results(client, r["run_id"], e1)
        backbone = r.get("params.model.backbone") or ""
        rows.append([name, backbone, "Stage-I", e1] + [pct(res["stage1"][k]) for k in
                                                        ("val_mAP", "val_rank1", "val_rank5", "val_mINP")])
        rows.append([name, backbone, "Stage-II", e1 + int(e2) if e2 is not None else ""]
                    + [pct(res["final"][k]) for k in ("val_mAP", "val_rank1", "val_rank5", "val_mINP")])
        if res["stage1"]["val_mAP"] is not None and res["final"]["val_mAP"] is not None:
            deltas.append((res["final"]["val_mAP"] - res["stage1"]["val_mAP"],
                           (res["final"]["val_rank1"] or 0.0) - (res["stage1"]["val_rank1"] or 0.0)))
    note = ("Validation split (the paper's Table V uses the private test set). Stage-I = the last validation "
            "of Stage-I (epoch = `stage1.epochs`); Stage-II = the end of fine-tuning.")
    if deltas:
        dm = sum(d[0] for d in deltas) / len(deltas)
        dr = sum(d[1] for d in deltas) / len(deltas)
        note += f" Mean change from Stage-I to Stage-II over {len(deltas)} trials: mAP {100 * dm:+.2f}, Rank@1 {100 * dr:+.2f}."
    if single_stage:
        note += f" Single-stage (SSBVER) trials left out: {', '.join(single_stage)}."
    if not rows:
        return _section("stages", "_No two-stage (VehicleNet) trials with validation results in this experiment._", note)
    return _section("stages", markdown_table(header, rows), note)


def load_ensemble_tables(ensemble_dir: str | Path) -> dict[str, Any]:
    """Read ``<ensemble_dir>/tables.json`` (written by the ensemble step) and check its shape."""
    path = Path(ensemble_dir) / TABLES_FILE
    if not path.is_file():
        raise VreidError(f"ensemble output {ensemble_dir}: missing {TABLES_FILE}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VreidError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise VreidError(f"{path}: expected an object with 'single_vs_ensemble' and 'postprocess' lists")
    for key in ("single_vs_ensemble", "postprocess"):
        rows = data.get(key, [])
        if not isinstance(rows, list) or not all(isinstance(x, dict) for x in rows):
            raise VreidError(f"{path}: '{key}' must be a list of objects, got {type(rows).__name__}")
    return data


def ensemble_table(tables: Optional[dict[str, Any]]) -> str:
    """The single best model vs the fused ensemble on the validation split."""
    if tables is None:
        return _section("ensemble", "_No ensemble run found: run `vreid ensemble` first._")
    rows_in = tables.get("single_vs_ensemble", [])
    for i, row in enumerate(rows_in):
        if "name" not in row:
            raise VreidError(f"{TABLES_FILE}: single_vs_ensemble row {i} has no 'name'")
    header = ["model"] + [h for _, h in ENSEMBLE_METRICS]
    singles = [i for i, r in enumerate(rows_in) if not str(r["name"]).lower().startswith("ensemble")
               and _num(r.get("mAP")) is not None]
    best = max(singles, key=lambda i: _num(rows_in[i]["mAP"])) if len(singles) > 1 else None
    rows = [[f"**{r['name']}** (best single)" if i == best else r["name"]] + [pct(r.get(k)) for k, _ in ENSEMBLE_METRICS]
            for i, r in enumerate(rows_in)]
    models = tables.get("models") or []
    note = f"Validation split; the ensemble fuses {len(models)} models" + (
        " (" + ", ".join(str(m.get("trial_id", "?")) for m in models) + ")." if models else ".")
    return _section("ensemble", markdown_table(header, rows), note)


def postprocess_table(tables: Optional[dict[str, Any]]) -> str:
    """VehicleNet Table VI: each post-processing step added in turn, on the validation split."""
    if tables is None:
        return _section("postprocess", "_No ensemble run found: run `vreid ensemble` first._")
    rows_in = tables.get("postprocess", [])
    for i, row in enumerate(rows_in):
        if "step" not in row:
            raise VreidError(f"{TABLES_FILE}: postprocess row {i} has no 'step'")
    header = ["step"] + [h for _, h in ENSEMBLE_METRICS]
    rows = [[r["step"]] + [pct(r.get(k)) for k, _ in ENSEMBLE_METRICS] for r in rows_in]
    note = "Each row adds one step to the previous row's pipeline (validation split)."
    return _section("postprocess", markdown_table(header, rows), note)


def environment_line(tags: Optional[dict[str, str]] = None) -> str:
    """Device and library versions: the ones recorded on the runs (``eff.*`` tags) when present,
    otherwise those of the environment building the report (the same machine in the demo)."""
    import importlib
    import importlib.metadata as md

    tags = tags or {}
    versions = {}
    for lib in ("torch", "timm", "ray", "mlflow"):
        recorded = tags.get(f"eff.{lib}_version")
        if recorded:
            versions[lib] = recorded
            continue
        try:  # the module's own version string (torch's carries its build, e.g. +cpu / +cu130)
            versions[lib] = str(importlib.import_module(lib).__version__)
        except ImportError:
            try:
                versions[lib] = md.version(lib)
            except md.PackageNotFoundError:
                versions[lib] = "not installed"
    device = tags.get("eff.device") or "cpu"
    cpu = _cpu_name()
    import os

    where = "recorded on the runs" if any(k.startswith("eff.") for k in tags) else "of this environment"
    return (f"Measured on: device `{device}` ({cpu}, {os.cpu_count()} logical CPUs, Python "
            f"{platform.python_version()}); library versions {where}: "
            + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _eff(key: str, value: Any) -> str:
    v = _num(value)
    if v is None:
        return ""
    return str(int(round(v))) if key == "feat_dim" else f"{v:.2f}"


def efficiency_table(experiment: str, tracking_uri: str) -> str:
    """SSBVER Table 1 for every trial that logged ``eff_*`` metrics (one row per trial)."""
    runs = trial_runs(experiment_runs(experiment, tracking_uri))
    cols = {"params_m": "# Params (M)", "ms_per_image_b1": "ms/image (batch 1)", "images_per_s": "images/s (batch B)",
            "peak_mem_mb": "peak memory (MB)", "feat_dim": "# Dims"}
    have = [c for c in cols if f"metrics.eff_{c}" in runs.columns]
    if not have:
        return _section("efficiency", "_No trial logged efficiency metrics (`eff_*`)._", environment_line())
    measured = runs[runs[[f"metrics.eff_{c}" for c in have]].notna().any(axis=1)]
    if "metrics.val_mAP" in measured.columns:
        measured = measured.sort_values("metrics.val_mAP", ascending=False)
    header = ["trial", "backbone", "image size"] + [cols[c] for c in have]
    rows, batch_sizes = [], set()
    tag_env: dict[str, str] = {}
    for _, r in measured.iterrows():
        size = r.get("params.data.image_size") or ""
        rows.append([_trial_name(r), r.get("params.model.backbone") or "", size]
                    + [_eff(c, r.get(f"metrics.eff_{c}")) for c in have])
        b = _num(r.get("metrics.eff_batch_size"))
        if b is not None:
            batch_sizes.add(int(b))
        for k in r.index:
            if k.startswith("tags.eff.") and isinstance(r[k], str) and r[k]:
                tag_env.setdefault(k.removeprefix("tags."), r[k])
    bnote = f"B = {', '.join(map(str, sorted(batch_sizes)))}" if batch_sizes else "B = the measuring batch size (not logged)"
    note = (f"Parameters of the exported re-id model; speed and peak memory of feature extraction in "
            f"inference mode; {bnote}. " + environment_line(tag_env))
    return _section("efficiency", markdown_table(header, rows), note)
