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
    lrs = lr_schedule(cfg.stage1)
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
