"""``vreid train CONFIG.yaml [--set key=value ...] [--name NAME]``: one recipe end to end on Ray Train."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one recipe (vehiclenet Stage-I/II, ssbver, ssbver_baseline) on Ray Train")
    p.add_argument("config", help="a YAML run config (search_spaces/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set stage1.lr=0.01 (repeatable)")
    p.add_argument("--name", help="run name (default: the config's name); re-running a name resumes it")
    p.add_argument("--num-cpus", type=float, default=None, help="logical CPUs of the local Ray cluster")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept manifest rows whose image path lies outside the dataset root(s) it was built from")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from vreid.config import load_config
    from vreid.distributed.run import train_run
    from vreid.errors import ConfigError
    from vreid.io import read_text_file
    from vreid.preflight import check_num_cpus, check_run_config

    check_num_cpus(args.num_cpus)
    read_text_file(args.config, "run config", ConfigError)  # names the file and line of non-UTF-8 bytes
    cfg = load_config(args.config, args.overrides)
    if args.name:
        cfg.name = args.name
    check_run_config(cfg, args.config, allow_outside_root=args.allow_outside_root)  # before Ray starts: backbone, weights, manifests, numbers
    summary = train_run(cfg, num_cpus=args.num_cpus)
    print(summary["table"])
    return 0
