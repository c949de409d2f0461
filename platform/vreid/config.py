"""Typed run and grid configs, loaded from ``search_spaces/*.yaml`` and validated once, at the edge.

A YAML file holds one :class:`RunConfig` (a recipe with its data, model, stage schedules, scaling and
output settings) and, for grids, a ``grid`` section (:class:`GridConfig`) listing the values to sweep.
Unknown keys and values of the wrong type fail with a :class:`~vreid.errors.ConfigError` naming the
dotted key (``stage1.lr``) and the file, so a typo never silently falls back to a default.

Defaults are the papers' settings:

* VehicleNet (sec. V-A): SGD, momentum 0.9, weight decay 1e-4 (5e-4 for the AI City runs), lr 0.02
  divided by 10 at epoch 40 of Stage-I (60 epochs) and epoch 8 of Stage-II (12 epochs), batch 36,
  naive sampling (Table VIII), fc 512 + BN head, feature = BN output.
* SSBVER (sec. 4.3), filled in for ``recipe: ssbver`` / ``ssbver_baseline`` wherever the YAML leaves a
  ``stage1`` key unset (:func:`recipe_stage_defaults`): 120 epochs, label smoothing 0.2, P x K batches
  (P = 16, K = 4), 10 linear warm-up epochs ("rate 0.099") and ``optimizer: auto``, which
  :func:`resolve_stage` turns into the backbone family's (:mod:`vreid.models.families`): ResNet /
  ResNet-IBN (and other CNNs) Adam lr 5e-4, wd 1e-3, x0.1 at 40/70/100; ViT / Swin / ConvNeXt AdamW +
  cosine (1e-4 -> 1.6e-5), wd 1e-4. EMA teacher momentum
  0.9995; tau_s = 0.1, tau_t 0.0005 -> 0.001 over the first 10 epochs; SSL head size E per target
  (:func:`ssl_out_dim`: 1024 VeRi-776, 8192 VehicleID, 16384 VeRi-Wild).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from vreid.errors import ConfigError

RECIPES = ("vehiclenet", "ssbver", "ssbver_baseline")
TARGETS = ("cityflow", "veri776", "vehicleid", "veriwild")
#: SSBVER 4.3: "the output dimensionality of the SSL head E is set to 1024, 8192 and 16384 for the VeRi,
#: VehicleID and VeRiWild datasets"; CityFlow (not in the paper) gets VeRi's, the closest in size.
SSL_OUT_DIM = {"veri776": 1024, "vehicleid": 8192, "veriwild": 16384, "cityflow": 1024}


@dataclass
class DataConfig:
    """Manifests (parquet, from ``vreid data vehiclenet``) and image handling."""

    manifests: Optional[str] = None  # a folder from `vreid data vehiclenet`; fills the paths below
    stage1_train: Optional[str] = None
    stage2_train: Optional[str] = None
    val_query: Optional[str] = None
    val_gallery: Optional[str] = None
    image_size: list[int] = field(default_factory=lambda: [256, 256])  # [height, width]
    loader_workers: int = 2
    use_bbox: bool = True
    # "camera": train a camera classifier with the same recipe (camera ids as labels), whose features
    # drive camera verification by clustering (VehicleNet IV-C, Fig. 5: the camera-aware DenseNet121)
    label_by: Literal["identity", "camera"] = "identity"

    def resolved(self, base: Path | None = None) -> "DataConfig":
        """Fill unset manifest paths from ``manifests`` and make every path absolute."""
        out = copy.deepcopy(self)
        root = Path(out.manifests) if out.manifests else None
        if root is not None and not root.is_absolute() and base is not None:
            root = (base / root).resolve()
        for name in ("stage1_train", "stage2_train", "val_query", "val_gallery"):
            value = getattr(out, name)
            if value is None and root is not None:
                value = str(root / f"{name}.parquet")
            if value is not None:
                p = Path(value)
                if not p.is_absolute():
                    p = ((base or Path.cwd()) / p).resolve()
                value = str(p)
            setattr(out, name, value)
        if root is not None:
            out.manifests = str(root.resolve())
        return out


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    pretrained: Union[bool, str] = False  # true: timm's local cache; a path: a local weights file
    last_stride: int = 1
    head: Optional[Literal["vehiclenet", "bnneck"]] = None  # default from the recipe
    fc_dim: int = 512
    dropout: float = 0.5


@dataclass
class StageConfig:
    """One training stage's optimisation schedule (epochs are 0-based in code, 1-based in logs)."""

    epochs: int = 60
    batch_size: int = 36
    # lr / weight_decay / scheduler / milestones / min_lr: None = the optimiser's default, filled in by
    # resolve_stage when the stage is built (VehicleNet's 0.02, 1e-4, step at 40; "auto": the family's)
    lr: Optional[float] = None
    backbone_lr_mult: float = 0.1  # the authors' code trains pretrained layers at 0.1 x lr
    # "auto": SSBVER 4.3's optimiser and schedule of the backbone family - Adam + step decay for
    # ResNets, AdamW + cosine for ViT / Swin / ConvNeXt; keys set in the YAML are kept
    optimizer: Literal["sgd", "adam", "adamw", "auto"] = "sgd"
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    scheduler: Optional[Literal["step", "cosine"]] = None
    milestones: Optional[list[int]] = None
    gamma: float = 0.1
    min_lr: Optional[float] = None
    warmup_epochs: int = 0
    warmup_factor: float = 0.099  # SSBVER: linear warm-up "with rate 0.099"
    sampler: Literal["naive", "balanced", "pk"] = "naive"
    num_instances: int = 4  # K of the P x K sampler; P = batch_size // K
    label_smoothing: float = 0.0
    eval_every: int = 1


@dataclass
class SSBVERConfig:
    lambda_ce: float = 1.0
    lambda_triplet: float = 1.0
    lambda_ssl: float = 1.0
    triplet_margin: Optional[float] = None  # None: soft-margin (SSBVER Eq. 1)
    ema_momentum: float = 0.9995
    n_local: int = 4  # Fig. 7: best at L = 4
    local_size: list[int] = field(default_factory=lambda: [96, 96])
    dino_out_dim: Optional[int] = None  # E; None: per target (1024 VeRi, 8192 VehicleID, 16384 VeRi-Wild)
    dino_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 256
    dino_mlp_layers: int = 3  # linear layers before the weight-normalised last one (DINO's nlayers)
    center_momentum: float = 0.9  # DINO's centre EMA
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.0005
    teacher_temp: float = 0.001
    teacher_temp_warmup_epochs: int = 10
    ssl_loss: Literal["ce", "rmse"] = "ce"


@dataclass
class EvalConfig:
    """Validation views; None: the recipe's and target's protocol (:func:`vreid.evaluate.features.default_views`:
    SSBVER one pass of the teacher, VehicleNet the flipped mean, on CityFlow also scales 1, 0.9, 0.8)."""

    flip: Optional[bool] = None
    scales: Optional[list[float]] = None
    vehicleid_draws: int = 10  # VehicleID validation: seeded gallery draws (the protocol's 10)
    vehicleid_seed: int = 0
    batch_size: int = 64
    metric: Literal["cosine", "euclidean"] = "cosine"


@dataclass
class ScalingSettings:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    mixed_precision: bool = True  # only on GPU
    max_failures: int = 2


@dataclass
class OutputConfig:
    root: str = "outputs"
    storage_path: Optional[str] = None  # default <root>/ray; shared storage (s3://, NFS) on a cluster
    mlflow_tracking_uri: Optional[str] = None  # default sqlite:///<root>/mlflow.db or $MLFLOW_TRACKING_URI


@dataclass
class GridConfig:
    """A Tune grid over dotted RunConfig keys, e.g. ``{"stage1.batch_size": [32, 48]}``.

    A key may join several settings with ``+`` to sweep them together with one value, e.g.
    ``stage1.lr+stage2.lr: [0.01, 0.02]`` (both stages start from the same rate, as in VehicleNet V-A).
    """

    params: dict[str, list[Any]] = field(default_factory=dict)
    top_k: int = 8
    metric: str = "val_mAP"
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int = 0  # 0: as many as the resources allow
    trial_cpus: float = 0.5  # the trial driver's own CPU share; its Train workers add theirs
    trial_gpus: float = 0.0


@dataclass
class RunConfig:
    name: str = "run"
    recipe: Literal["vehiclenet", "ssbver", "ssbver_baseline"] = "vehiclenet"
    seed: int = 0
    # the dataset the run is validated on; None: the one the manifests record (vreid data vehiclenet --target)
    target: Optional[Literal["cityflow", "veri776", "vehicleid", "veriwild"]] = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=lambda: StageConfig(epochs=12, milestones=[8]))
    ssbver: SSBVERConfig = field(default_factory=SSBVERConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    output: OutputConfig = field(default_factory=OutputConfig)
    grid: Optional[GridConfig] = None
    description: str = ""

    # -- derived -----------------------------------------------------------------------------
    @property
    def head(self) -> str:
        if self.model.head:
            return self.model.head
        return "vehiclenet" if self.recipe == "vehiclenet" else "bnneck"

    @property
    def stages(self) -> list[str]:
        """The stages a recipe runs: VehicleNet Stage-I then Stage-II (``stage2.epochs: 0``: Stage-I only, e.g.
        the paper's Stage-I rows, or a model whose two stages would see the same data); SSBVER one stage
        (``stage1``)."""
        if self.recipe != "vehiclenet":
            return ["stage1"]
        return ["stage1"] if self.stage2.epochs == 0 else ["stage1", "stage2"]

    def stage(self, name: str) -> StageConfig:
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, for MLflow params and comparison tables."""
        return flatten(self.to_dict())


# -- loading -------------------------------------------------------------------------------------
def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key != "params":
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check (and lightly coerce) ``value`` against annotation ``tp``; raise naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping of {tp.__name__} settings, got {value!r}")
        return _build(tp, value, key + ".", where)
    if origin is Union:
        errors = []
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: '{key}' = {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: '{key}' = {value!r}; expected one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}", where) for k, v in value.items()} if args else dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}' (known keys under "
            f"'{prefix.rstrip('.') or 'top level'}': {', '.join(sorted(names))})"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name, where) for name, value in data.items()}
    return cls(**kwargs)


SSBVER_STAGE_DEFAULTS: dict[str, Any] = {
    "epochs": 120, "batch_size": 64, "num_instances": 4, "sampler": "pk", "label_smoothing": 0.2,
    "warmup_epochs": 10, "warmup_factor": 0.099, "backbone_lr_mult": 1.0, "optimizer": "auto",
}
#: SSBVER 4.3 per backbone family, what ``optimizer: auto`` resolves to (:func:`resolve_stage`)
FAMILY_OPTIMISERS: dict[str, dict[str, Any]] = {
    "adam": {"optimizer": "adam", "lr": 5e-4, "weight_decay": 1e-3, "scheduler": "step",
             "milestones": [40, 70, 100], "gamma": 0.1},
    "adamw": {"optimizer": "adamw", "lr": 1e-4, "min_lr": 1.6e-5, "weight_decay": 1e-4, "scheduler": "cosine"},
}


def recipe_stage_defaults(recipe: str) -> dict[str, Any]:
    """``stage1`` settings a recipe fills in where the YAML leaves them unset (SSBVER 4.3; the optimiser
    is ``auto``: the backbone family's). VehicleNet's are the :class:`StageConfig` defaults themselves."""
    if recipe not in ("ssbver", "ssbver_baseline"):
        return {}
    return dict(SSBVER_STAGE_DEFAULTS)


def family_optimiser(backbone: str) -> dict[str, Any]:
    """SSBVER 4.3's optimiser, schedule, learning rate and weight decay for ``backbone``'s family:
    Adam 5e-4, wd 1e-3, x0.1 at 40/70/100 (ResNet, ResNet-IBN, other CNNs); AdamW, cosine 1e-4 -> 1.6e-5,
    wd 1e-4 (ViT, Swin, ConvNeXt)."""
    from vreid.models.families import uses_adamw

    return dict(FAMILY_OPTIMISERS["adamw" if uses_adamw(backbone) else "adam"])


#: what an unset key of a stage means with an explicit optimiser (VehicleNet sec. V-A)
CLASSIC_STAGE = {"lr": 0.02, "weight_decay": 1e-4, "scheduler": "step", "milestones": [40], "min_lr": 1.6e-5}


def resolve_stage(stage: "StageConfig", backbone: str) -> "StageConfig":
    """Fill the stage's unset optimiser keys: with ``optimizer: auto`` from the backbone family's
    SSBVER 4.3 settings (:func:`family_optimiser`), otherwise from :data:`CLASSIC_STAGE`. Keys the YAML
    sets are kept. Resolved when a stage is built, not when the YAML is read, so a grid over
    ``model.backbone`` gets each family's settings."""
    fam = family_optimiser(backbone) if stage.optimizer == "auto" else {}
    fill = {**CLASSIC_STAGE, **{k: v for k, v in fam.items() if k in CLASSIC_STAGE}}
    values = {k: (getattr(stage, k) if getattr(stage, k) is not None else copy.deepcopy(v)) for k, v in fill.items()}
    return dataclasses.replace(stage, optimizer=fam.get("optimizer", stage.optimizer), **values)


def _with_recipe_defaults(data: dict[str, Any]) -> dict[str, Any]:
    recipe = data.get("recipe", "vehiclenet")
    stage = data.get("stage1")
    if not isinstance(recipe, str) or (stage is not None and not isinstance(stage, dict)):
        return data  # _build names the bad value
    defaults = recipe_stage_defaults(recipe)
    if not defaults:
        return data
    return {**data, "stage1": {**defaults, **(stage or {})}}


def config_from_dict(data: dict[str, Any], where: str = "<config>") -> RunConfig:
    """A validated :class:`RunConfig` from a mapping; the recipe's stage defaults fill unset keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    cfg = _build(RunConfig, _with_recipe_defaults(data), "", where)
    validate(cfg, where)
    return cfg


def manifest_target(cfg: RunConfig) -> Optional[str]:
    """The target recorded in the manifests by ``vreid data vehiclenet --target`` (None if none is)."""
    from vreid.data.schema import read_manifest_metadata

    for path in (cfg.data.val_query, cfg.data.stage2_train, cfg.data.stage1_train):
        if path and "://" not in str(path) and Path(path).is_file():
            target = (read_manifest_metadata(path).get("vehiclenet") or {}).get("target")
            if target:
                return str(target)
    return None


def resolve_target(cfg: RunConfig, where: str = "<config>") -> RunConfig:
    """Fill ``target`` from the manifests; a ``target`` that contradicts them fails naming both."""
    recorded = manifest_target(cfg)
    if recorded and cfg.target and recorded != cfg.target:
        raise ConfigError(f"{where}: 'target' is {cfg.target!r} but the manifests were built for "
                          f"{recorded!r} (vreid data vehiclenet --target {recorded})")
    if recorded and recorded not in TARGETS:
        raise ConfigError(f"{where}: the manifests record target {recorded!r}; expected one of {list(TARGETS)}")
    cfg.target = cfg.target or recorded
    return cfg


def ssl_out_dim(cfg: RunConfig) -> int:
    """SSBVER's E: ``ssbver.dino_out_dim`` if set, else the target's (:data:`SSL_OUT_DIM`; VeRi's if unknown)."""
    return int(cfg.ssbver.dino_out_dim or SSL_OUT_DIM[cfg.target or "veri776"])


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` (or ``a.b+c.d``: each of them) in a nested dict, creating mappings on the way."""
    if "+" in dotted:
        for part in dotted.split("+"):
            set_dotted(data, part, value)
        return
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{dotted}': '{part}' is not a mapping")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is parsed as YAML (numbers, lists, true/false)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return key.strip(), value


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML config, apply ``--set`` overrides, validate, and resolve relative paths.

    Relative data paths are resolved against the current directory (the user's shell), never
    against a Ray worker's changed directory.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        set_dotted(data, key, value)
    cfg = config_from_dict(data, str(path))
    cfg.data = cfg.data.resolved(Path.cwd())
    return resolve_target(cfg, str(path))


def validate(cfg: RunConfig, where: str) -> None:
    h, w = (cfg.data.image_size + [0, 0])[:2]
    if len(cfg.data.image_size) != 2 or h <= 0 or w <= 0:
        raise ConfigError(f"{where}: 'data.image_size' must be [height, width] > 0, got {cfg.data.image_size}")
    for stage in cfg.stages:
        s = cfg.stage(stage)
        if s.epochs < 1:
            hint = " (or 0: Stage-I only)" if stage == "stage2" else ""
            raise ConfigError(f"{where}: '{stage}.epochs' must be >= 1{hint}, got {s.epochs}")
        if s.batch_size < 1:
            raise ConfigError(f"{where}: '{stage}.batch_size' must be >= 1, got {s.batch_size}")
        if s.lr is not None and s.lr <= 0:
            raise ConfigError(f"{where}: '{stage}.lr' must be > 0, got {s.lr}")
        if s.sampler == "pk" and s.batch_size % s.num_instances:
            raise ConfigError(
                f"{where}: '{stage}.batch_size' ({s.batch_size}) must be a multiple of "
                f"'{stage}.num_instances' ({s.num_instances}) for the P x K sampler"
            )
    if cfg.recipe != "vehiclenet" and cfg.stage1.sampler != "pk":
        raise ConfigError(f"{where}: recipe '{cfg.recipe}' needs 'stage1.sampler: pk' (batch-hard triplet)")
    if cfg.ssbver.dino_out_dim is not None and cfg.ssbver.dino_out_dim < 1:
        raise ConfigError(f"{where}: 'ssbver.dino_out_dim' must be >= 1 (or unset: the target's E)")
    if cfg.ssbver.dino_mlp_layers < 1:
        raise ConfigError(f"{where}: 'ssbver.dino_mlp_layers' must be >= 1, got {cfg.ssbver.dino_mlp_layers}")
    if not 0.0 <= cfg.ssbver.center_momentum < 1.0:
        raise ConfigError(f"{where}: 'ssbver.center_momentum' must be in [0, 1), got {cfg.ssbver.center_momentum}")
    if cfg.eval.scales is not None and (not cfg.eval.scales or any(v <= 0 for v in cfg.eval.scales)):
        raise ConfigError(f"{where}: 'eval.scales' must be a non-empty list of positive factors, got {cfg.eval.scales}")
    if cfg.scaling.num_workers < 1:
        raise ConfigError(f"{where}: 'scaling.num_workers' must be >= 1")
    if cfg.grid is not None:
        for key, values in cfg.grid.params.items():
            for part in key.split("+"):
                _check_dotted_key(part, where)
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: 'grid.params.{key}' must be a non-empty list of values")


def _check_dotted_key(dotted: str, where: str) -> None:
    cls: Any = RunConfig
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"{where}: grid key 'grid.params.{dotted}' does not name a setting")
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise ConfigError(f"{where}: grid key 'grid.params.{dotted}': unknown key '{part}'")
        tp = hints[part]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        cls = args[0] if typing.get_origin(tp) is Union and args else tp


def dump_config(cfg: RunConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
