"""Errors raised for bad user input: the CLI prints their message and exits non-zero."""


class VreidError(Exception):
    """A user-facing error whose message names the file / line / field and what was expected."""


class DataFormatError(VreidError):
    """An on-disk dataset file is missing or does not parse."""


class ConfigError(VreidError):
    """A YAML config has an unknown, missing or mistyped key."""


class EvaluationInputError(VreidError, ValueError):
    """Arrays given to an evaluation function do not match what it expects."""
