"""Training checkpoints: tensors and plain values only, never pickled objects.

A checkpoint directory holds

* ``model.safetensors`` - the exported re-id model (for SSBVER the EMA *teacher*, which is what the
  paper evaluates; for VehicleNet the trained network),
* ``model_config.json`` - the keyword arguments that rebuild it (backbone, head, classes, image size),
* ``state.pt`` - what resuming needs: student/teacher weights, optimiser state, epoch, RNG states and
  the DINO centre, loadable with ``torch.load(weights_only=True)``,
* ``metrics.json`` - the epoch's reported metrics.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vreid.errors import VreidError

MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model_config.json"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.json"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_checkpoint(
    directory: str | Path,
    *,
    export_state: dict[str, torch.Tensor] | None = None,
    export_model: torch.nn.Module | None = None,
    model_config: dict[str, Any],
    state: dict[str, Any],
    metrics: dict[str, Any],
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if export_state is None:
        if export_model is None:
            raise ValueError("save_checkpoint: give export_state or export_model")
        export_state = export_model.state_dict()
    save_file(_contiguous(export_state), str(directory / MODEL_FILE))
    (directory / MODEL_CONFIG_FILE).write_text(json.dumps(model_config, indent=2, sort_keys=True))
    torch.save(state, directory / STATE_FILE)
    (directory / METRICS_FILE).write_text(json.dumps(_jsonable(metrics), indent=2, sort_keys=True))
    return directory


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        out[k] = v
    return out


def load_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise VreidError(f"checkpoint {directory}: missing {STATE_FILE}")
    return torch.load(path, map_location="cpu", weights_only=True)


def read_model_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise VreidError(f"checkpoint {directory}: missing {MODEL_CONFIG_FILE} (is this a vreid checkpoint?)")
    from vreid.io import read_json_file

    data = read_json_file(path, MODEL_CONFIG_FILE)
    if not isinstance(data, dict):
        raise VreidError(f"{path}: expected a JSON mapping of model settings, got {type(data).__name__}")
    return data


def check_model_types(model_config: dict[str, Any], where: str) -> None:
    """Value types of a ``model_config.json``'s known keys against :class:`ReidModel`'s defaults (unknown
    and missing keys are the model factory's to name: :func:`vreid.models.build_model`)."""
    import inspect

    from vreid.models import ReidModel

    params = inspect.signature(ReidModel.__init__).parameters
    for key, value in model_config.items():
        if key not in params or key == "self":
            continue
        default = params[key].default
        if key == "backbone_name" or isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, bool):
            ok = isinstance(value, bool) or key == "pretrained"
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = True
        if not ok:
            raise VreidError(f"{where}: {key!r} = {value!r} has the wrong type (expected like {default!r})")


def load_model_for_inference(directory: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the exported model of a checkpoint (strict load) in eval mode.

    Returns ``(model, info)``; ``info`` is the model config plus ``image_size`` ([h, w]) and
    ``checkpoint`` (the directory). A checkpoint whose weights do not match its config fails with the
    names of the mismatching keys.
    """
    from vreid.storage import local_checkpoint

    directory = Path(local_checkpoint(str(directory)))  # s3://... (any pyarrow URI) is downloaded once
    if not directory.is_dir():
        raise VreidError(f"checkpoint not found: {directory}")
    weights = directory / MODEL_FILE
    if not weights.is_file():
        raise VreidError(f"checkpoint {directory}: missing {MODEL_FILE}")
    model_config = read_model_config(directory)
    config_path = directory / MODEL_CONFIG_FILE
    check_model_types(model_config, str(config_path))
    from vreid.models import build_model

    try:
        model = build_model(model_config, pretrained=False)  # weights come from the checkpoint
    except VreidError as exc:  # e.g. an unknown backbone_name: say which file holds it
        raise VreidError(f"{config_path}: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:  # unknown keys, values of the wrong type
        raise VreidError(f"{config_path}: cannot build the model from it ({type(exc).__name__}: {exc})") from None
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError, OSError, ...
        raise VreidError(f"{weights}: not a readable safetensors file ({type(exc).__name__}: {exc}; "
                         f"{weights.stat().st_size} bytes)") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise VreidError(f"checkpoint {directory}: weights do not match {MODEL_CONFIG_FILE}: {exc}") from None
    if missing or unexpected:
        raise VreidError(
            f"checkpoint {directory}: weights do not match {MODEL_CONFIG_FILE}: "
            f"missing keys {list(missing)[:5]}, unexpected keys {list(unexpected)[:5]}"
        )
    shapes_ok = all(model.state_dict()[k].shape == v.shape for k, v in state.items())
    if not shapes_ok:
        raise VreidError(f"checkpoint {directory}: tensor shapes do not match {MODEL_CONFIG_FILE}")
    model.eval().to(device)
    info = dict(model_config)
    info["checkpoint"] = str(directory)
    return model, info
