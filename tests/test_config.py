"""Typed configs: every search space loads; unknown or mistyped keys fail naming the key."""

import pytest

from conftest import REPO
from vreid.config import config_from_dict, load_config, resolve_stage
from vreid.errors import ConfigError
from vreid.train.schedules import lr_schedule, teacher_temp_schedule


@pytest.mark.parametrize("name", ["demo", "aicity2020", "veri776_vehiclenet", "ssbver_veri776"])
def test_search_spaces_load(name):
    cfg = load_config(REPO / "search_spaces" / f"{name}.yaml")
    assert cfg.grid is not None and cfg.grid.params


def test_aicity_grid_has_32_models():
    cfg = load_config(REPO / "search_spaces" / "aicity2020.yaml")
    n = 1
    for values in cfg.grid.params.values():
        n *= len(values)
    assert n == 32 and cfg.grid.top_k == 8
    assert cfg.model.backbone == "seresnext101_32x4d" and cfg.data.image_size == [384, 384]


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="stage1.lrr"):
        config_from_dict({"stage1": {"lrr": 0.1}}, "x.yaml")


def test_mistyped_value_is_named():
    with pytest.raises(ConfigError, match="stage1.epochs"):
        config_from_dict({"stage1": {"epochs": "ten"}}, "x.yaml")
    with pytest.raises(ConfigError, match="recipe"):
        config_from_dict({"recipe": "vehiclenett"}, "x.yaml")


def test_bad_grid_key_is_named():
    with pytest.raises(ConfigError, match="stage9"):
        config_from_dict({"grid": {"params": {"stage9.lr": [0.1]}}}, "x.yaml")


def test_override_and_joined_grid_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\nstage1: {lr: 0.1}\n")
    cfg = load_config(p, ["stage1.lr=0.5", "stage2.epochs=3", "data.image_size=[32, 64]"])
    assert cfg.stage1.lr == 0.5 and cfg.stage2.epochs == 3 and cfg.data.image_size == [32, 64]
    from vreid.config import set_dotted

    d = {}
    set_dotted(d, "stage1.lr+stage2.lr", 0.3)
    assert d == {"stage1": {"lr": 0.3}, "stage2": {"lr": 0.3}}


def test_step_schedule_matches_paper():
    cfg = config_from_dict({"stage1": {"epochs": 60, "lr": 0.02, "milestones": [40]}})
    lrs = lr_schedule(resolve_stage(cfg.stage1, "resnet50"))
    assert lrs[0] == pytest.approx(0.02) and lrs[39] == pytest.approx(0.02)
    assert lrs[40] == pytest.approx(0.002) and lrs[59] == pytest.approx(0.002)


def test_warmup_and_cosine():
    cfg = config_from_dict({"recipe": "ssbver", "stage1": {"sampler": "pk", "epochs": 20, "lr": 1e-4, "optimizer": "auto",
                                                           "warmup_epochs": 10, "warmup_factor": 0.099}})
    stage = resolve_stage(cfg.stage1, "vit_base_patch16_224")
    assert stage.optimizer == "adamw" and stage.scheduler == "cosine"
    lrs = lr_schedule(stage)
    assert lrs[0] == pytest.approx(1e-4 * 0.099)
    assert lrs[10] == pytest.approx(1e-4)  # end of warm-up = start of the cosine
    assert lrs[-1] > 1.6e-5 and lrs[-1] < lrs[11]
    assert resolve_stage(cfg.stage1, "resnet50").optimizer == "adam"
    temps = teacher_temp_schedule(0.0005, 0.001, 10, 20)
    assert temps[0] == pytest.approx(0.0005) and temps[9] == pytest.approx(0.001) and temps[19] == pytest.approx(0.001)


@pytest.mark.parametrize("backbone,family", [
    ("resnet50", "adam"), ("resnet50_ibn_a", "adam"), ("seresnext101_32x4d", "adam"), ("densenet121", "adam"),
    ("vit_base_patch16_224", "adamw"), ("swin_base_patch4_window7_224", "adamw"), ("convnext_base", "adamw"),
    ("cait_s24_224", "adamw"), ("xcit_small_12_p16_224", "adamw"), ("test_vit", "adamw"), ("test_resnet", "adam"),
])
def test_ssbver_defaults_are_section_4_3_per_family(backbone, family):
    """`recipe: ssbver` with nothing else set trains as SSBVER 4.3 says, whatever the backbone."""
    from vreid.models.families import backbone_family

    for recipe in ("ssbver", "ssbver_baseline"):
        cfg = config_from_dict({"recipe": recipe, "model": {"backbone": backbone}})
        s = cfg.stage1
        assert (s.epochs, s.label_smoothing, s.sampler, s.warmup_epochs, s.warmup_factor) == (120, 0.2, "pk", 10, 0.099)
        stage = resolve_stage(s, backbone)
        if family == "adam":
            assert (stage.optimizer, stage.lr, stage.weight_decay, stage.scheduler, stage.milestones, stage.gamma) \
                == ("adam", 5e-4, 1e-3, "step", [40, 70, 100], 0.1)
            assert backbone_family(backbone) in ("resnet", "cnn")
        else:
            assert (stage.optimizer, stage.lr, stage.min_lr, stage.weight_decay, stage.scheduler) \
                == ("adamw", 1e-4, 1.6e-5, 1e-4, "cosine")
            assert backbone_family(backbone) in ("vit", "swin", "convnext")
    # a key the YAML sets is kept; VehicleNet keeps its own (SGD) defaults
    cfg = config_from_dict({"recipe": "ssbver", "model": {"backbone": backbone},
                            "stage1": {"epochs": 7, "optimizer": "sgd", "lr": 0.01}})
    assert (cfg.stage1.epochs, cfg.stage1.label_smoothing, resolve_stage(cfg.stage1, backbone).lr) == (7, 0.2, 0.01)
    # with optimizer auto, the keys the YAML sets are kept too (every key does something)
    cfg = config_from_dict({"recipe": "ssbver", "model": {"backbone": backbone}, "stage1": {"lr": 0.002}})
    assert resolve_stage(cfg.stage1, backbone).lr == 0.002
    assert resolve_stage(cfg.stage1, backbone).optimizer == family
    assert config_from_dict({"model": {"backbone": backbone}}).stage1.optimizer == "sgd"


def test_one_family_list_for_config_and_backbones():
    """The optimiser defaults and last_stride read the same families (vreid.models.families)."""
    import torch

    from vreid.models import build_backbone

    convnext, _ = build_backbone("test_convnext", last_stride=1)
    strides = [m.stride for m in convnext.body.stages[-1].downsample.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides == [(2, 2)] and not convnext.last_stride_applied  # ConvNeXt keeps its down-sampling
    resnet, _ = build_backbone("test_resnet", last_stride=1)
    assert resnet.last_stride_applied
    assert resolve_stage(config_from_dict({"recipe": "ssbver"}).stage1, "test_convnext").optimizer == "adamw"


def test_target_from_manifests_and_e_per_target(tmp_path):
    import pandas as pd

    from vreid.config import resolve_target, ssl_out_dim
    from vreid.data.schema import normalize_manifest, write_manifest

    from vreid.data.schema import COLUMNS

    row = {c: [None] for c in COLUMNS}
    row.update(path=["a.jpg"], image_name=["a.jpg"], dataset=["vehicleid"], split=["query"], vehicle_id=[1],
               camera=[-1], label=[-1], source_id=["vehicleid:1"], timestamp=[float("nan")])
    df = normalize_manifest(pd.DataFrame(row))
    for name in ("val_query", "val_gallery", "stage1_train", "stage2_train"):
        write_manifest(df, tmp_path / f"{name}.parquet", {"vehiclenet": {"target": "vehicleid", "role": name}})
    cfg = config_from_dict({"recipe": "ssbver", "data": {"manifests": str(tmp_path)}})
    cfg.data = cfg.data.resolved()
    assert cfg.target is None and resolve_target(cfg).target == "vehicleid"
    assert ssl_out_dim(cfg) == 8192
    cfg.target = "veri776"
    with pytest.raises(ConfigError, match="built for 'vehicleid'"):
        resolve_target(cfg)
    assert ssl_out_dim(config_from_dict({"recipe": "ssbver", "target": "veriwild"})) == 16384
    assert ssl_out_dim(config_from_dict({"recipe": "ssbver", "target": "veriwild", "ssbver": {"dino_out_dim": 64}})) == 64


def test_stage2_epochs_zero_runs_stage1_only():
    """VehicleNet with `stage2.epochs: 0` runs Stage-I only (the demo's camera model: both stages would see
    the same images); a negative count is refused, and SSBVER stays one stage whatever stage2 says."""
    assert config_from_dict({}).stages == ["stage1", "stage2"]
    assert config_from_dict({"stage2": {"epochs": 0}}).stages == ["stage1"]
    with pytest.raises(ConfigError, match=r"'stage2.epochs' must be >= 1 \(or 0: Stage-I only\), got -1"):
        config_from_dict({"stage2": {"epochs": -1}}, "x.yaml")
    with pytest.raises(ConfigError, match=r"'stage1.epochs' must be >= 1, got 0"):
        config_from_dict({"stage1": {"epochs": 0}}, "x.yaml")
    assert config_from_dict({"recipe": "ssbver", "stage1": {"sampler": "pk"}, "stage2": {"epochs": 0}}).stages == ["stage1"]
