"""``vreid report NAME``: the papers' tables and figures for a grid / ensemble, from MLflow."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write report.md (tables) and figures/*.png for a grid and its ensemble")
    p.add_argument("name", help="grid (MLflow experiment) name")
    p.add_argument("--root", default="outputs/demo", help="output root holding mlflow.db (default: outputs/demo)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or <root>/mlflow.db)")
    p.add_argument("--ensemble-dir", help="ensemble output dir (default: the ensemble run's vreid.ensemble_dir tag)")
    p.add_argument("--out", help="where report.md and figures/ go (default: --root)")
    p.add_argument("--queries", type=int, default=4, help="queries in the retrieval figure (default: 4)")
    p.add_argument("--top-k", type=int, default=5, help="gallery images per query in the retrieval figure (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed for choosing queries and images (default: 0)")
    p.add_argument("--no-log", action="store_true", help="do not log the report as MLflow artifacts")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from vreid.errors import VreidError
    from vreid.report import build_report

    if args.queries < 1 or args.top_k < 1:
        raise VreidError(f"--queries and --top-k must be >= 1, got {args.queries} and {args.top_k}")
    path = build_report(args.name, root=args.root, tracking_uri=args.tracking_uri, ensemble_dir=args.ensemble_dir,
                        out=args.out, num_queries=args.queries, top_k=args.top_k, seed=args.seed,
                        log_artifacts=not args.no_log)
    print(f"report written to {path} (figures in {path.parent / 'figures'})")
    return 0
