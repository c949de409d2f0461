"""The ``vreid`` command.

Each area of the library registers its own sub-commands (``register(subparsers)`` in its ``cli``
module); heavy imports (torch, ray, mlflow) happen inside the handlers so ``vreid --help`` is fast.
Config is read here, at the edge, and turned into plain arguments for library functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vreid.errors import VreidError

# Modules that define ``register(subparsers)``; order is the order in ``vreid --help``.
_COMMAND_MODULES = [
    "vreid.data.cli",
    "vreid.train.cli",
    "vreid.evaluate.cli",
    "vreid.distributed.cli",
    "vreid.ensemble.cli",
    "vreid.report_cli",
    "vreid.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vreid",
        description="Vehicle re-identification experiments on Ray: data, training, grids, ensembles.",
    )
    from vreid import __version__

    parser.add_argument("--version", action="version", version=f"vreid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that area is not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``vreid`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except VreidError as exc:
        print(f"vreid: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vreid: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
