"""The training recipes on generated data with a tiny timm backbone: the learning tests run the plain
engine in-process with one thread (what a Ray Train worker runs), the others on the session's Ray head
(Ray Train TorchTrainer, gloo on CPU).

* VehicleNet Stage-I then Stage-II, and SSBVER: the final validation mAP beats the same network
  untrained by a margin measured over seeds (this can fail: a broken loss, sampler or label mapping does
  not learn).
(A worker that dies mid-run is covered by tests/test_pipeline.py, inside a grid trial.)
* Two Ray Train workers see disjoint shards covering the training set, with identical parameters
  after every step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine_callbacks import ShardRecorder, by_value
from vreid.config import config_from_dict

by_value()  # the recorder callbacks travel to Ray workers by value


def tiny_config(manifests: Path, root: Path, **over) -> dict:
    cfg = {
        "name": "t",
        "recipe": "vehiclenet",
        "seed": 0,
        "data": {"manifests": str(manifests), "image_size": [64, 64], "loader_workers": 0},
        "model": {"backbone": "test_resnet", "fc_dim": 128, "dropout": 0.0},
        "stage1": {"epochs": 4, "batch_size": 32, "lr": 0.05, "backbone_lr_mult": 1.0, "milestones": [3],
                   "weight_decay": 5e-4},
        "stage2": {"epochs": 3, "batch_size": 32, "lr": 0.05, "backbone_lr_mult": 1.0, "milestones": [2],
                   "weight_decay": 5e-4},
        "eval": {"flip": True, "batch_size": 128},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 2},
        "output": {"root": str(root)},
    }
    for key, value in over.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def untrained_map(cfg, num_classes: int) -> float:
    """The same network, same seed, no training: the baseline the trained mAP must beat."""
    from vreid.config import resolve_target
    from vreid.train.data import seed_everything
    from vreid.train.recipes import recipe_class
    from vreid.train.validation import validate

    resolve_target(cfg)
    seed_everything(cfg.seed)
    recipe = recipe_class(cfg.recipe)(cfg, "stage1", num_classes)
    return validate(recipe.eval_model(), cfg, torch.device("cpu"))["val_mAP"]


@pytest.fixture(scope="module")
def target_manifests(demo_data, tmp_path_factory):
    """VehicleNet manifests built for the VeRi-776, VehicleID and VeRi-Wild targets by the real merge."""
    from vreid.cli import main

    out = {}
    for target in ("veri776", "vehicleid", "veriwild"):
        d = tmp_path_factory.mktemp(f"manifests_{target}")
        args = ["data", "vehiclenet"]
        for src in ("cityflow", "veri776", "vehicleid", "veriwild"):
            args += ["--source", f"{src}={demo_data / src}"]
        assert main(args + ["--target", target, "--out", str(d)]) == 0
        out[target] = d
    return out


@pytest.mark.integration  # two training runs (4 + 3 epochs)
def test_vehiclenet_stage1_stage2_learns(vehiclenet_manifests, tmp_path):
    """VehicleNet Stage-I on the merged manifest, then Stage-II from its checkpoint on CityFlow (the
    plain engine, one thread, as a Ray Train worker runs it; Ray Train itself: the pipeline's grid and the
    two-worker tests). Stage-II's final mAP beats the untrained network's, its checkpoint has the target's
    classes, and `vreid evaluate` on it gives the logged validation mAP.

    Margin, measured with this setting over seeds 0, 1, 2: untrained 0.132 / 0.215 / 0.117, Stage-I
    0.353 / 0.407 / 0.406, Stage-II 0.403 / 0.441 / 0.358, i.e. Stage-II 3.06 / 2.05 / 3.06 x untrained;
    the threshold (1.6 x) leaves 22 % under the lowest. (The old thresholds had none: 3 x, and Stage-II
    >= Stage-I - 0.02, which seed 2 misses by 0.03: on 24 validation queries the Stage-II - Stage-I
    difference, -0.048 .. +0.049 over these seeds, is noise; the paper's Stage-II gain is not visible at
    this size.)"""
    from vreid.cli import main
    from vreid.data.schema import read_manifest
    from vreid.train import engine

    torch.set_num_threads(1)
    cfg = config_from_dict(tiny_config(vehiclenet_manifests, tmp_path))
    cfg.data = cfg.data.resolved()
    st1 = engine.prepare(cfg, "stage1")
    s1 = engine.fit(st1)
    engine.save_stage_checkpoint(tmp_path / "stage1", st1.recipe, st1.optimizer, st1.epochs - 1, s1)
    st2 = engine.prepare(cfg, "stage2", init_checkpoint=str(tmp_path / "stage1"))
    s2 = engine.fit(st2)
    engine.save_stage_checkpoint(tmp_path / "stage2", st2.recipe, st2.optimizer, st2.epochs - 1, s2)
    n1 = int(read_manifest(cfg.data.stage1_train)["label"].max()) + 1
    base = untrained_map(cfg, n1)
    print(f"untrained mAP {base:.4f}; Stage-I {s1['val_mAP']:.4f}; Stage-II {s2['val_mAP']:.4f}")
    assert s2["val_mAP"] >= 1.6 * base, (base, s1, s2)
    # Stage-II replaced only the classifier: its checkpoint has the target's classes
    ck2 = json.loads((tmp_path / "stage2" / "model_config.json").read_text())
    n2 = int(read_manifest(cfg.data.stage2_train)["label"].max()) + 1
    assert st1.recipe.num_classes == n1 != n2 and ck2["num_classes"] == n2 and ck2["stage"] == "stage2"
    # checkpoints load without unpickling objects
    state = torch.load(tmp_path / "stage2" / "state.pt", weights_only=True)
    assert state["epoch"] == cfg.stage2.epochs - 1
    # vreid evaluate on the Stage-II checkpoint (CityFlow: flip x scales 1, 0.9, 0.8 by default) gives the
    # logged validation mAP
    assert ck2["eval"]["flip"] is True and ck2["eval"]["scales"] == [1.0, 0.9, 0.8]
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--protocol", "cityflow", "--query", cfg.data.val_query, "--gallery", cfg.data.val_gallery,
                 "--checkpoint", str(tmp_path / "stage2"), "--json", str(out), "--no-progress"]) == 0
    assert abs(json.loads(out.read_text())[0]["mAP"] - s2["val_mAP"]) <= 1e-6


def small_config(manifests: Path, root: Path, recipe: str, seed: int, epochs: int = 10) -> dict:
    """The learning tests' setting: the VeRi-776-target manifests of the generated data (20 training
    ids, 160 images), 32 x 32, test_resnet, `epochs` epochs; the BNNeck recipes with their SSBVER
    defaults except a learning rate, warm-up and EMA scaled to ~50 steps (the paper's 0.9995 EMA and
    10 warm-up epochs are made for ~70,000 steps)."""
    raw = {"name": f"{recipe}-{seed}", "recipe": recipe, "seed": seed,
           "data": {"manifests": str(manifests), "stage1_train": str(manifests / "stage2_train.parquet"),
                    "image_size": [32, 32], "loader_workers": 0},
           "model": {"backbone": "test_resnet", "fc_dim": 128, "dropout": 0.0}, "eval": {"batch_size": 128},
           "scaling": {"num_workers": 1, "cpus_per_worker": 1}, "output": {"root": str(root)}}
    if recipe == "vehiclenet":
        raw["stage1"] = {"epochs": epochs, "batch_size": 32, "lr": 0.05, "backbone_lr_mult": 1.0,
                         "milestones": [epochs - 1], "weight_decay": 5e-4}
        raw["stage2"] = {"epochs": 1}
    else:
        raw["stage1"] = {"epochs": epochs, "batch_size": 32, "lr": 2e-3, "warmup_epochs": 1, "milestones": [epochs - 1]}
        raw["ssbver"] = {"ema_momentum": 0.9, "n_local": 2, "local_size": [16, 16], "dino_out_dim": 256,
                         "dino_hidden_dim": 256, "dino_bottleneck_dim": 64, "teacher_temp_warmup_epochs": 2}
    return raw


@pytest.mark.integration  # a 10-epoch training run
def test_ssbver_teacher_learns(target_manifests, tmp_path):
    """SSBVER: the EMA teacher (evaluated, exported without the SSL head) learns. The plain engine, as a
    Ray Train worker runs it with one thread (SSBVER on Ray Train itself: the two-worker test below and
    `vreid train` on VeRi-Wild).

    Margin, measured with the same setting and code (plain engine, 1 thread) over seeds 0, 1, 2:
    untrained 0.223 / 0.410 / 0.245, teacher after 10 epochs 0.459 / 0.627 / 0.426, i.e. 2.05 / 1.53 /
    1.74 x untrained; the threshold below (trained >= 1.3 x untrained) leaves 15 % under the lowest
    seed's ratio. (The old 3 x threshold on 64 x 64 CityFlow validation had none.)"""
    from vreid.train import engine

    torch.set_num_threads(1)
    cfg = config_from_dict(small_config(target_manifests["veri776"], tmp_path, "ssbver", seed=0))
    cfg.data = cfg.data.resolved()
    stage = engine.prepare(cfg, "stage1")
    m = engine.fit(stage)
    assert m["loss_ssl"] > 0 and m["loss_triplet"] >= 0
    base = untrained_map(cfg, 20)
    print(f"untrained mAP {base:.4f}; SSBVER teacher {m['val_mAP']:.4f}")
    assert m["val_mAP"] >= 1.3 * base
    # the exported model is the teacher, without the SSL head (no inference overhead)
    _, model_config = stage.recipe.export()
    assert model_config["dino_out_dim"] is None and model_config["recipe"] == "ssbver"


@pytest.mark.integration  # two 10-epoch training runs
def test_ssbver_baseline_learns_within_vehiclenets_epoch_budget(target_manifests, tmp_path):
    """Same data, same 10 epochs (plain engine): the BNNeck baseline reaches at least 0.4 x VehicleNet's
    mAP and 1.3 x its own untrained mAP.

    Measured over seeds 0, 1, 2 (32 x 32, 1 thread): VehicleNet 0.772 / 0.745 / 0.765 (untrained 0.244 /
    0.422 / 0.245); ssbver_baseline 0.465 / 0.625 / 0.399 (untrained 0.223 / 0.410 / 0.245), i.e. 0.60 /
    0.84 / 0.52 x VehicleNet and 2.08 / 1.52 / 1.63 x untrained. Margins: 0.52 vs 0.4, 1.52 vs 1.3.
    (Why the baseline is slower here -- SSBVER's colour jitter and erasing on colour-coded generated
    identities, label smoothing 0.2 -- is measured in README, "What to expect on small generated data".)"""
    from vreid.train import engine
    from vreid.train.data import seed_everything
    from vreid.train.recipes import recipe_class
    from vreid.train.validation import validate

    torch.set_num_threads(1)
    out = {}
    for recipe in ("vehiclenet", "ssbver_baseline"):
        cfg = config_from_dict(small_config(target_manifests["veri776"], tmp_path, recipe, seed=0))
        cfg.data = cfg.data.resolved()
        stage = engine.prepare(cfg, "stage1")
        seed_everything(cfg.seed)
        untrained = validate(recipe_class(recipe)(cfg, "stage1", stage.recipe.num_classes).eval_model(), cfg, "cpu")
        out[recipe] = (untrained["val_mAP"], engine.fit(stage)["val_mAP"])
    print(out)
    (vn_base, vn), (bl_base, bl) = out["vehiclenet"], out["ssbver_baseline"]
    assert vn >= 1.3 * vn_base
    assert bl >= 1.3 * bl_base and bl >= 0.4 * vn


# -- the engine and recipes without Ray ----------------------------------------------------------------
def tiny_ssbver_cfg(**ssbver):
    return config_from_dict({
        "recipe": "ssbver", "seed": 0, "data": {"image_size": [32, 32]},
        "model": {"backbone": "test_resnet"},
        "stage1": {"epochs": 2, "batch_size": 8, "num_instances": 2, "lr": 1e-3},
        "ssbver": {"n_local": 2, "local_size": [16, 16], "dino_out_dim": 16, "dino_hidden_dim": 32,
                   "dino_bottleneck_dim": 8, "ema_momentum": 0.9, **ssbver},
    })


def _bn_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def test_teacher_bn_statistics_are_its_own_global_views_only():
    """SSBVER 3.1 / DINO: the EMA covers parameters; the teacher's BN running statistics come from the
    global views forwarded through the teacher in train mode, never from the student's local crops."""
    import copy

    from vreid.train.engine import make_optimizer
    from vreid.train.recipes import SSBVERRecipe

    torch.manual_seed(0)
    cfg = tiny_ssbver_cfg()
    recipe = SSBVERRecipe(cfg, "stage1", num_classes=4)
    g1, g2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    # local crops from a visibly different distribution, so statistics that saw them are recognisable
    l1, l2 = torch.randn(8, 3, 16, 16) * 3 + 2, torch.randn(8, 3, 16, 16) * 3 + 2
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    reference = copy.deepcopy(recipe.teacher).train()
    with torch.no_grad():
        reference(torch.cat([g1, g2]))  # what the teacher's statistics must be after the step
    teacher_before = {n: p.detach().clone() for n, p in recipe.teacher.named_parameters()}
    opt = make_optimizer(recipe.param_groups(), recipe.stage)
    recipe.train()
    losses = recipe.losses(([g1, g2, l1, l2], targets, torch.arange(8)), epoch=0)
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    recipe.after_step()
    t_bn, r_bn, s_bn = _bn_modules(recipe.teacher), _bn_modules(reference), _bn_modules(recipe.model)
    assert t_bn
    for name, m in t_bn.items():
        assert torch.allclose(m.running_mean, r_bn[name].running_mean, atol=1e-6), name
        assert torch.allclose(m.running_var, r_bn[name].running_var, atol=1e-6), name
    # the student's statistics saw the local crops: they are not the teacher's
    stem = "backbone.body.bn1"
    assert not torch.allclose(t_bn[stem].running_mean, s_bn[stem].running_mean, atol=1e-3)
    # parameters: theta_t = m theta_t + (1 - m) theta_s
    s_params = dict(recipe.model.named_parameters())
    for name, p in recipe.teacher.named_parameters():
        expected = 0.9 * teacher_before[name] + 0.1 * s_params[name].detach()
        assert torch.allclose(p, expected, atol=1e-6), name


def test_ssl_settings_reach_the_model_and_the_loss():
    """Every ssbver key does something: non-default sizes change the built head, the centre
    momentum reaches the loss, and E follows the target unless set."""
    from vreid.models.heads import WeightNormLinear
    from vreid.train.recipes import SSBVERRecipe

    cfg = tiny_ssbver_cfg(dino_out_dim=24, dino_hidden_dim=40, dino_bottleneck_dim=12, dino_mlp_layers=2,
                          center_momentum=0.5)
    recipe = SSBVERRecipe(cfg, "stage1", num_classes=4)
    linears = [m for m in recipe.model.dino_head.mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(recipe.model.backbone_dim, 40), (40, 12)]
    last = recipe.model.dino_head.last_layer
    assert isinstance(last, WeightNormLinear) and tuple(last.weight_v.shape) == (24, 12)
    assert recipe.dino.center_momentum == 0.5 and recipe.dino.out_dim == 24
    # E per target (SSBVER 4.3) when unset
    for target, e in (("veri776", 1024), ("vehicleid", 8192), ("veriwild", 16384)):
        cfg = tiny_ssbver_cfg(dino_out_dim=None)
        cfg.target = target
        assert SSBVERRecipe(cfg, "stage1", num_classes=4).model.dino_head.out_dim == e


def test_ssbver_is_evaluated_with_one_teacher_pass():
    from vreid.evaluate.features import default_views
    from vreid.train.recipes import SSBVERBaselineRecipe, SSBVERRecipe
    from vreid.train.validation import eval_views

    cfg = tiny_ssbver_cfg()
    assert eval_views(cfg) == (False, (1.0,))
    recipe = SSBVERRecipe(cfg, "stage1", num_classes=4)
    assert recipe.eval_model() is recipe.teacher
    sd, model_config = recipe.export()
    assert model_config["eval"]["flip"] is False and model_config["eval"]["scales"] == [1.0]
    assert not any(k.startswith("dino_head.") for k in sd) and model_config["dino_out_dim"] is None
    cfg.eval.flip = True  # ... unless the config asks
    assert eval_views(cfg) == (True, (1.0,))
    assert default_views("vehiclenet", "cityflow") == (True, (1.0, 0.9, 0.8))
    assert default_views("vehiclenet", "veri776") == (True, (1.0,))
    assert SSBVERBaselineRecipe(tiny_ssbver_cfg(), "stage1", num_classes=4).eval_model() is not None


@pytest.mark.integration  # a training run (without Ray)
def test_engine_fits_a_recipe_without_ray(vehiclenet_manifests, tmp_path):
    """prepare + fit in this process (no Ray): losses fall, validation runs, callbacks see every
    step and epoch, and a checkpoint saved by the engine loads as the exported model."""
    from vreid.train import engine
    from vreid.train.checkpoint import load_model_for_inference

    raw = tiny_config(vehiclenet_manifests, tmp_path, **{"stage1.epochs": 2, "data.image_size": [32, 32]})
    cfg = config_from_dict(raw)
    cfg.data = cfg.data.resolved()
    stage = engine.prepare(cfg, "stage1")
    seen: list = []

    class Record:
        def on_step_end(self, ctx):
            seen.append(("step", ctx.epoch, ctx.step))

        def on_epoch_end(self, ctx):
            seen.append(("epoch", ctx.epoch, dict(ctx.metrics)))

    metrics = engine.fit(stage, callbacks=[Record()])
    epochs = [s for s in seen if s[0] == "epoch"]
    assert [e[1] for e in epochs] == [0, 1] and len(seen) == 2 + 2 * len(stage.loader)
    assert epochs[1][2]["loss"] < epochs[0][2]["loss"]
    assert 0 <= metrics["val_mAP"] <= 1 and cfg.target == "cityflow"
    engine.save_stage_checkpoint(tmp_path / "ck", stage.recipe, stage.optimizer, 1, metrics)
    model, info = load_model_for_inference(tmp_path / "ck")
    assert info["recipe"] == "vehiclenet" and info["eval"] == {"flip": True, "scales": [1.0, 0.9, 0.8], "metric": "cosine"}


# -- two Ray Train workers on each target, then vreid evaluate on the checkpoint ---------------------------
def _logged_val_map_is_the_protocols(target: str, man: Path, tmp_path: Path, run: str, recipe: str) -> None:
    """The logged val_mAP is the target protocol's: `vreid evaluate --checkpoint` on the validation split,
    with the checkpoint's default views for the recipe, gives it to 1e-6."""
    from vreid.cli import main

    done = json.loads((tmp_path / "ray" / f"{run}-stage1" / "vreid_stage.json").read_text())
    logged = done["metrics"]["val_mAP"]
    ck = done["checkpoint"]
    info = json.loads((Path(ck) / "model_config.json").read_text())
    assert info["target"] == target
    assert info["eval"]["flip"] is (recipe == "vehiclenet") and info["eval"]["scales"] == [1.0]
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--protocol", target, "--query", str(man / "val_query.parquet"), "--gallery",
                 str(man / "val_gallery.parquet"), "--checkpoint", ck, "--json", str(out), "--no-progress"]) == 0
    row = json.loads(out.read_text())[0]
    assert 0 < logged <= 1 and abs(row["mAP"] - logged) <= 1e-6, (row, logged)
    if target == "vehicleid":
        assert row["draws"] == 10  # the mean over the protocol's seeded gallery draws
    else:
        assert row["same_camera"] == "keep"  # the rule the manifests record


def test_two_workers_vehicleid_disjoint_shards_identical_params_and_protocol(ray_cluster, target_manifests, tmp_path):
    """VehicleNet on two Ray Train workers (`train_run`, what `vreid train` runs), VehicleID target: the
    workers see disjoint shards covering the training set, with identical parameters after every step,
    and other orders each epoch; the logged val_mAP is VehicleID's protocol (no cameras, so a same-camera
    junk rule would leave no true match; the mean of 10 seeded gallery draws)."""
    from vreid.data.schema import read_manifest
    from vreid.distributed.run import train_run

    man = target_manifests["vehicleid"]
    raw = tiny_config(man, tmp_path, name="two-vid", **{"stage1.epochs": 2, "stage1.milestones": [2],
                                                       "stage2.epochs": 0, "scaling.num_workers": 2,
                                                       "scaling.cpus_per_worker": 1, "data.image_size": [32, 32]})
    raw["eval"] = {"batch_size": 128}  # the recipe's default views: VehicleNet's flipped mean
    cfg = config_from_dict(raw)
    cfg.data = cfg.data.resolved()
    debug = tmp_path / "debug"
    train_run(cfg, extra_config={"callbacks": [ShardRecorder(str(debug))]})
    n = len(read_manifest(cfg.data.stage1_train))
    for epoch in (1, 2):
        r0 = json.loads((debug / f"stage1_e{epoch}_r0.json").read_text())
        r1 = json.loads((debug / f"stage1_e{epoch}_r1.json").read_text())
        s0, s1 = set(r0["seen"]), set(r1["seen"])
        assert not (s0 & s1), "the two workers' shards overlap"
        # drop_last may leave out less than one batch per worker; everything else is covered
        assert len(s0 | s1) >= n - 2 * cfg.stage1.batch_size and (s0 | s1) <= set(range(n))
        assert r0["digests"] and r0["digests"] == r1["digests"], "parameters differ between workers after a step"
    # the epochs see different orders
    e1 = json.loads((debug / "stage1_e1_r0.json").read_text())["seen"]
    e2 = json.loads((debug / "stage1_e2_r0.json").read_text())["seen"]
    assert e1 != e2
    _logged_val_map_is_the_protocols("vehicleid", man, tmp_path, "two-vid", "vehiclenet")


def test_two_workers_ssbver_pk_batches_whole_identities_veriwild(ray_cluster, target_manifests, tmp_path):
    """SSBVER (DINO head, multi-crop) with two workers, VeRi-Wild target: P x K batches give each worker
    whole identities, the multi-crop student (local crops through the same parameters) stays identical
    across workers, and the logged val_mAP (the teacher, one pass) is VeRi-Wild's protocol with the
    same-camera rule the manifests record."""
    from vreid.data.schema import read_manifest
    from vreid.distributed.run import train_run
    from vreid.train.data import training_labels

    man = target_manifests["veriwild"]
    raw = tiny_config(
        man, tmp_path, recipe="ssbver", name="two-ssb",
        **{"stage1": {"epochs": 1, "batch_size": 16, "num_instances": 4, "sampler": "pk", "optimizer": "adam",
                      "lr": 0.003, "backbone_lr_mult": 1.0, "milestones": [7], "warmup_epochs": 0},
           "ssbver": {"n_local": 2, "local_size": [16, 16], "dino_out_dim": 64, "ema_momentum": 0.9,
                      "dino_hidden_dim": 64, "dino_bottleneck_dim": 32},
           "scaling": {"num_workers": 2, "cpus_per_worker": 1}, "data.image_size": [32, 32]},
    )
    raw["eval"] = {"batch_size": 128}  # the recipe's default views: SSBVER one teacher pass
    cfg = config_from_dict(raw)
    cfg.data = cfg.data.resolved()
    debug = tmp_path / "debug"
    train_run(cfg, extra_config={"callbacks": [ShardRecorder(str(debug))]})
    labels = training_labels(read_manifest(cfg.data.stage2_train))
    r0 = json.loads((debug / "stage1_e1_r0.json").read_text())
    r1 = json.loads((debug / "stage1_e1_r1.json").read_text())
    ids0, ids1 = set(labels[r0["seen"]].tolist()), set(labels[r1["seen"]].tolist())
    assert ids0 and ids1 and not (ids0 & ids1), "an identity was split across workers"
    assert r0["digests"] and r0["digests"] == r1["digests"]
    _logged_val_map_is_the_protocols("veriwild", man, tmp_path, "two-ssb", "ssbver")
