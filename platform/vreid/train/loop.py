"""The per-worker training loop: one plain function of a config dict, run unchanged by one or many
Ray Train workers (``TorchTrainer(train_loop_per_worker, ...)``).

``config`` carries ``run`` (a :class:`vreid.config.RunConfig` as a dict), ``stage`` (``stage1`` or
``stage2``) and optionally ``init_checkpoint`` (Stage-II starts from Stage-I) and ``debug_dir``.

Recipes:

* ``vehiclenet`` (VehicleNet sec. IV-B, Alg. 1): cross-entropy on the fc512+BN head. Stage-I trains
  on the merged VehicleNet manifest; Stage-II loads Stage-I, replaces only the final classifier
  (``fc2``) for the target's classes and fine-tunes on the target.
* ``ssbver`` (SSBVER sec. 3, Eq. 5): ``lambda_c * CE + lambda_t * triplet + lambda_s * DINO`` on the
  student; an EMA teacher (momentum 0.9995) sees the two global views, the student all 2 + L views.
  The teacher is what gets evaluated and exported.
* ``ssbver_baseline``: the same without the SSL head; the EMA teacher is still evaluated.

Every epoch rank 0 evaluates on the target's validation query/gallery, then all ranks call
``ray.train.report`` (a barrier) with the metrics; rank 0 attaches a checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vreid.config import RunConfig, config_from_dict, resolve_stage
from vreid.progress import DEFAULT_EVERY_STEPS, EpochProgress
from vreid.train.checkpoint import load_model_for_inference, load_state, rng_state, save_checkpoint, set_rng_state
from vreid.train.schedules import lr_schedule, teacher_temp_schedule

VAL_KEYS = ("val_mAP", "val_rank1", "val_rank5", "val_mINP")


# -- helpers --------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train_manifest_path(cfg: RunConfig, stage: str) -> str:
    """Stage-I: the merged VehicleNet manifest; Stage-II and SSBVER: the target's training set."""
    if cfg.recipe == "vehiclenet" and stage == "stage1":
        path = cfg.data.stage1_train
    else:
        path = cfg.data.stage2_train or cfg.data.stage1_train
    if not path:
        from vreid.errors import ConfigError

        raise ConfigError(f"no training manifest for {cfg.recipe}/{stage}: set data.manifests or data.{stage}_train")
    return path


def training_labels(df, label_by: str = "identity") -> np.ndarray:
    """The contiguous ``label`` column; manifests without one get labels from sorted vehicle ids.
    ``label_by="camera"``: contiguous labels from the camera ids (the camera classifier)."""
    if label_by == "camera":
        cams = df["camera"].to_numpy()
        if (cams < 0).any():
            from vreid.errors import VreidError

            raise VreidError("label_by: camera needs a camera id on every training image (found -1)")
        uniq = {v: i for i, v in enumerate(sorted(set(cams.tolist())))}
        return np.array([uniq[v] for v in cams.tolist()], dtype=np.int64)
    if "label" in df.columns and (df["label"] >= 0).all():
        return df["label"].to_numpy(np.int64)
    ids = df["source_id"] if "source_id" in df.columns else df["vehicle_id"]
    uniq = {v: i for i, v in enumerate(sorted(set(ids.tolist())))}
    return np.array([uniq[v] for v in ids.tolist()], dtype=np.int64)


def model_kwargs(cfg: RunConfig, num_classes: int) -> dict[str, Any]:
    return {
        "backbone_name": cfg.model.backbone,
        "head": cfg.head,
        "num_classes": int(num_classes),
        "pretrained": cfg.model.pretrained,
        "last_stride": cfg.model.last_stride,
        "img_size": list(cfg.data.image_size),
        "fc_dim": cfg.model.fc_dim,
        "dropout": cfg.model.dropout,
        "dino_out_dim": cfg.ssbver.dino_out_dim if cfg.recipe == "ssbver" else None,
    }


def export_config(kwargs: dict[str, Any], cfg: RunConfig, stage: str) -> dict[str, Any]:
    out = dict(kwargs)
    out["pretrained"] = False
    out["dino_out_dim"] = None  # the exported model has no SSL head: no inference overhead
    out["image_size"] = list(cfg.data.image_size)
    out["recipe"] = cfg.recipe
    out["stage"] = stage
    return out


def param_groups(model: nn.Module, stage: Any) -> list[dict[str, Any]]:
    """Backbone at ``backbone_lr_mult * lr`` (the authors' code: 0.1 for pretrained layers), rest at lr."""
    backbone, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (backbone if name.startswith("backbone.") else rest).append(p)
    return [
        {"params": backbone, "lr_mult": stage.backbone_lr_mult},
        {"params": rest, "lr_mult": 1.0},
    ]


def make_optimizer(groups: list[dict[str, Any]], stage: Any) -> torch.optim.Optimizer:
    for g in groups:
        g["lr"] = stage.lr * g["lr_mult"]
    if stage.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay, nesterov=False)
    if stage.optimizer == "adam":
        return torch.optim.Adam(groups, lr=stage.lr, weight_decay=stage.weight_decay)
    return torch.optim.AdamW(groups, lr=stage.lr, weight_decay=stage.weight_decay)


def make_sampler(stage: Any, labels: np.ndarray, seed: int, world: int, rank: int):
    from vreid.data import samplers

    if stage.sampler == "pk":
        return None, samplers.PKSampler(
            labels, P=stage.batch_size // stage.num_instances, K=stage.num_instances, seed=seed, num_replicas=world, rank=rank
        )
    if stage.sampler == "balanced":
        return samplers.ClassBalancedSampler(labels, seed=seed, num_replicas=world, rank=rank), None
    return samplers.NaiveSampler(len(labels), seed=seed, num_replicas=world, rank=rank, shuffle=True), None


def params_digest(model: nn.Module) -> str:
    """Hash of the trainable parameters (BN running statistics are per-worker buffers that DDP
    re-broadcasts from rank 0 at each forward, so they are left out)."""
    h = hashlib.sha1()
    for _, p in sorted(model.named_parameters()):
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """SSBVER 3.1: theta_t <- lambda * theta_t + (1 - lambda) * theta_s; BN buffers copied."""
    s_params = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        p.mul_(momentum).add_(s_params[name].detach(), alpha=1.0 - momentum)
    s_bufs = dict(student.named_buffers())
    for name, b in teacher.named_buffers():
        b.copy_(s_bufs[name])


def evaluate_model(model: nn.Module, cfg: RunConfig, device: torch.device) -> dict[str, float]:
    """Validation mAP / CMC@1 / CMC@5 / mINP on the target's validation split (flip as the paper)."""
    from vreid.data.schema import read_manifest
    from vreid.evaluate import evaluate_features
    from vreid.evaluate.features import extract_features

    if not (cfg.data.val_query and cfg.data.val_gallery):
        return {}
    q_df = read_manifest(cfg.data.val_query)
    g_df = read_manifest(cfg.data.val_gallery)
    was_training = model.training
    model.eval()
    kw = dict(
        image_size=tuple(cfg.data.image_size), scales=tuple(cfg.eval.scales), flip=cfg.eval.flip,
        batch_size=cfg.eval.batch_size, use_bbox=cfg.data.use_bbox, device=str(device), progress=False,
    )
    qf = extract_features(model, q_df, **kw)
    gf = extract_features(model, g_df, **kw)
    model.train(was_training)
    res = evaluate_features(
        qf, gf, q_df["vehicle_id"].to_numpy(), g_df["vehicle_id"].to_numpy(),
        q_df["camera"].to_numpy(), g_df["camera"].to_numpy(), metric=cfg.eval.metric,
    )
    cmc = res["cmc"]
    return {
        "val_mAP": float(res["mAP"]),
        "val_rank1": float(cmc[0]),
        "val_rank5": float(cmc[min(4, len(cmc) - 1)]),
        "val_mINP": float(res["mINP"]),
    }


# -- the loop -------------------------------------------------------------------------------------
def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    from ray.train import Checkpoint

    from vreid.data.dataset import ManifestDataset, collate_multicrop
    from vreid.data.schema import read_manifest
    from vreid.data import transforms as T
    from vreid.losses import CrossEntropyLabelSmooth, DINOLoss, TripletLoss
    from vreid.models import ReidModel

    cfg = config_from_dict(config["run"], "<trainer config>")
    stage_name: str = config["stage"]
    stage = resolve_stage(cfg.stage(stage_name), cfg.model.backbone)
    debug_dir = config.get("debug_dir")

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = cfg.scaling.use_gpu and torch.cuda.is_available()
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    if not use_gpu:
        # one thread per whole CPU the worker holds (fractional CPUs: one), unless overridden
        torch.set_num_threads(int(os.environ.get("VREID_TORCH_THREADS") or max(1, int(cfg.scaling.cpus_per_worker))))

    seed_everything(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)

    # ---- data
    df = read_manifest(train_manifest_path(cfg, stage_name))
    labels = training_labels(df, cfg.data.label_by)
    num_classes = int(labels.max()) + 1
    df = df.assign(label=labels)
    size = tuple(cfg.data.image_size)
    if cfg.recipe == "ssbver":
        transform = T.MultiCropTransform(size, tuple(cfg.ssbver.local_size), cfg.ssbver.n_local)
        collate = collate_multicrop
    elif cfg.recipe == "ssbver_baseline":
        transform = T.ssbver_global_transform(size)
        collate = None
    else:
        transform = T.vehiclenet_train_transform(size)
        collate = None
    dataset = ManifestDataset(df, transform, use_bbox=cfg.data.use_bbox)
    sampler, batch_sampler = make_sampler(stage, labels, cfg.seed, world, rank)
    g = torch.Generator()
    g.manual_seed(cfg.seed * 1000 + rank)
    loader_kw: dict[str, Any] = dict(
        num_workers=cfg.data.loader_workers,
        pin_memory=use_gpu,
        generator=g,
        persistent_workers=cfg.data.loader_workers > 0,
        worker_init_fn=_worker_init,
    )
    if collate is not None:
        loader_kw["collate_fn"] = collate
    if batch_sampler is not None:
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **loader_kw)
    else:
        per_worker = max(1, stage.batch_size // world)
        loader = torch.utils.data.DataLoader(dataset, batch_size=per_worker, sampler=sampler, drop_last=len(sampler) > per_worker, **loader_kw)

    # ---- model
    kwargs = model_kwargs(cfg, num_classes)
    init_ckpt = config.get("init_checkpoint")
    notes: dict[str, Any] = {}
    if init_ckpt:  # Stage-II: Stage-I's network, new classifier (VehicleNet Alg. 1, line 5)
        model, _info = load_model_for_inference(init_ckpt)
        model.train()
        notes["dropped_classifier"] = model.reset_classifier(num_classes)
        if rank == 0:
            print(f"[vreid] {stage_name}: loaded {init_ckpt}; replaced the classifier: {notes['dropped_classifier']}", flush=True)
        kwargs["pretrained"] = False
    else:
        model = ReidModel(**kwargs)
    model.to(device)
    teacher = None
    if cfg.recipe in ("ssbver", "ssbver_baseline"):
        teacher = copy.deepcopy(model).to(device)  # theta_t^0 = theta_s^0
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()

    groups = param_groups(model, stage)
    optimizer = make_optimizer(groups, stage)
    lrs = lr_schedule(stage)
    ce = CrossEntropyLabelSmooth(num_classes, epsilon=stage.label_smoothing)
    triplet = TripletLoss(margin=cfg.ssbver.triplet_margin)
    dino = None
    if cfg.recipe == "ssbver":
        temps = teacher_temp_schedule(cfg.ssbver.warmup_teacher_temp, cfg.ssbver.teacher_temp, cfg.ssbver.teacher_temp_warmup_epochs, stage.epochs)
        dino = DINOLoss(
            cfg.ssbver.dino_out_dim, n_global=2, n_local=cfg.ssbver.n_local, teacher_temp_schedule=temps,
            student_temp=cfg.ssbver.student_temp, center_momentum=0.9, mode=cfg.ssbver.ssl_loss,
        ).to(device)

    # ---- resume
    start_epoch = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_state(d)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if teacher is not None and "teacher" in state:
            teacher.load_state_dict(state["teacher"])
        if dino is not None and "dino_center" in state:
            dino.center.copy_(state["dino_center"])
        set_rng_state(state["rng"])
        start_epoch = int(state["epoch"]) + 1
        if rank == 0:
            print(f"[vreid] {stage_name}: resumed after epoch {start_epoch} from {ckpt.path}", flush=True)

    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    amp = use_gpu and cfg.scaling.mixed_precision
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    last_val: dict[str, float] = {k: -1.0 for k in VAL_KEYS}

    for epoch in range(start_epoch, stage.epochs):
        for group in optimizer.param_groups:
            group["lr"] = float(lrs[epoch]) * group["lr_mult"]
        (batch_sampler or sampler).set_epoch(epoch)
        ddp_model.train()
        t0 = time.perf_counter()
        n_images = 0
        sums: dict[str, float] = {}
        n_steps = 0
        seen: list[int] = []
        digests: list[str] = []
        progress = EpochProgress(config.get("progress_label") or cfg.name, stage_name, epoch + 1, stage.epochs, len(loader),
                                 world, every=int(config.get("progress_every_steps", DEFAULT_EVERY_STEPS)) if rank == 0 else 0)
        for batch in loader:
            images, targets, index = batch
            targets = targets.to(device, non_blocking=True)
            seen.extend(index.tolist())
            with torch.autocast(device_type="cuda", enabled=amp):
                losses = _step_losses(cfg, ddp_model, teacher, images, targets, device, ce, triplet, dino, epoch)
                loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{stage_name} epoch {epoch + 1}: loss is {loss.item()} (lr {lrs[epoch]:.3g})")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if teacher is not None:
                ema_update(teacher, model, cfg.ssbver.ema_momentum)
            n_images += int(targets.shape[0])
            n_steps += 1
            progress.step(int(targets.shape[0]))  # a progress line every N steps (vreid/progress.py)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if debug_dir:
                digests.append(params_digest(model))
        elapsed = time.perf_counter() - t0
        metrics: dict[str, Any] = {f"{k}": v / max(n_steps, 1) for k, v in sums.items()}
        metrics.update({
            "epoch": epoch + 1,
            "stage": stage_name,
            "lr": float(lrs[epoch]),
            "images_per_s": n_images * world / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
            "num_classes": num_classes,
        })
        if debug_dir:
            _write_debug(debug_dir, stage_name, epoch, rank, seen, digests)

        is_last = epoch == stage.epochs - 1
        if rank == 0 and ((epoch + 1) % max(stage.eval_every, 1) == 0 or is_last):
            eval_model = teacher if teacher is not None else model
            last_val = evaluate_model(eval_model, cfg, device) or last_val
        metrics.update(last_val)

        checkpoint = None
        tmp = None
        if rank == 0:
            tmp = tempfile.mkdtemp(prefix="vreid-ckpt-")
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "rng": rng_state(),
            }
            if teacher is not None:
                state["teacher"] = teacher.state_dict()
            if dino is not None:
                state["dino_center"] = dino.center.detach().cpu()
            export = teacher if teacher is not None else model
            # the exported model has no SSL head (SSBVER: no inference overhead)
            export_sd = {k: v for k, v in export.state_dict().items() if not k.startswith("dino_head.")}
            save_checkpoint(tmp, export_state=export_sd, model_config=export_config(kwargs, cfg, stage_name), state=state, metrics={**metrics, **notes})
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)
        if tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        if config.get("inject_fault_after_epoch") and rank == world - 1:
            _maybe_inject_fault(int(config["inject_fault_after_epoch"]), epoch, config.get("fault_marker"))


def _step_losses(cfg, model, teacher, images, targets, device, ce, triplet, dino, epoch) -> dict[str, torch.Tensor]:
    if cfg.recipe == "vehiclenet":
        out = model(images.to(device, non_blocking=True))
        loss = ce(out["logits"], targets)
        return {"loss": loss, "loss_ce": loss.detach()}
    s = cfg.ssbver
    if cfg.recipe == "ssbver_baseline":
        out = model(images.to(device, non_blocking=True))
        l_ce = ce(out["logits"], targets)
        l_tri = triplet(out["feat_pre"], targets)
        loss = s.lambda_ce * l_ce + s.lambda_triplet * l_tri
        return {"loss": loss, "loss_ce": l_ce.detach(), "loss_triplet": l_tri.detach()}
    # SSBVER: views = [global_1, global_2, local_1..local_L]
    views = [v.to(device, non_blocking=True) for v in images]
    globals_ = torch.cat(views[:2])
    both_targets = torch.cat([targets, targets])
    out = model(globals_)
    l_ce = ce(out["logits"], both_targets)
    l_tri = triplet(out["feat_pre"], both_targets)
    student_dino = [out["dino"]]
    if len(views) > 2:
        base = model.module if hasattr(model, "module") else model
        local_feats = base.forward_features_multi(views[2:])
        student_dino.append(base.dino_head(torch.cat(local_feats)))
    with torch.no_grad():
        t_out = teacher(globals_)
    l_ssl = dino(torch.cat(student_dino), t_out["dino"], epoch)
    loss = s.lambda_ce * l_ce + s.lambda_triplet * l_tri + s.lambda_ssl * l_ssl
    return {"loss": loss, "loss_ce": l_ce.detach(), "loss_triplet": l_tri.detach(), "loss_ssl": l_ssl.detach()}


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    import random

    random.seed(seed)


def _write_debug(debug_dir: str, stage: str, epoch: int, rank: int, seen: list[int], digests: list[str]) -> None:
    path = Path(debug_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{stage}_e{epoch + 1}_r{rank}.json").write_text(json.dumps({"seen": seen, "digests": digests}))


def _maybe_inject_fault(after_epoch: int, epoch: int, marker_path: str | None) -> None:
    """Test hook for the fault tests: this worker process dies (``os._exit``) once, right after
    epoch ``after_epoch`` was reported; the marker file makes it happen only once per trial."""
    if not marker_path:
        return
    marker = Path(marker_path)
    if epoch + 1 == after_epoch and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        os._exit(1)
