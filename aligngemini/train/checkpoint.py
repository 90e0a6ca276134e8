"""Training checkpoints made only of safetensors and JSON (no pickle anywhere, so loading one runs no code).

A checkpoint is a directory ``<output>/checkpoints/step-00000120/``:

- ``model.safetensors``: the trainable parameters and the buffers (e.g. BatchNorm statistics), by name;
- ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's per-parameter tensors as
  ``state.<i>.<key>``; its parameter groups, non-tensor state and the parameter names by index as JSON;
- ``trainer.json``: step, data position (epoch, batches consumed in it, sampler seed, world size, batch
  size), scheduler and grad-scaler state, elapsed time and the recipe;
- ``rng-rank<R>.safetensors``: each process's RNG states (torch CPU and CUDA, numpy, python ``random``).

Directories are written under a ``.tmp`` name and renamed when complete, so a crash mid-write never
leaves a checkpoint that looks usable.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not fit the model being trained."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "trainer.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- model


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that require grad plus persistent buffers, as CPU copies (safe to save)."""
    state = model.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    keep = [k for k in state if k in trainable or k in buffers]
    return {k: state[k].detach().to("cpu", copy=True).contiguous() for k in keep}


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    expected = set(trainable_state_names(model))
    missing = sorted(expected - set(tensors))
    if missing:
        raise CheckpointError(
            f"{source}: has no values for trainable tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            "it was written for a different model or set of trainable parameters"
        )
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{source}: tensors {result.unexpected_keys[:8]} do not exist in the model")


def trainable_state_names(model: torch.nn.Module) -> list[str]:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return [k for k in model.state_dict() if k in trainable or k in buffers]


# ------------------------------------------------------------------------------------------- optimizer


def optimizer_to_files(
    state_dict: dict[str, Any], param_names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-ready metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    meta = {
        "format": FORMAT_VERSION,
        "param_groups": state_dict["param_groups"],
        "scalars": scalars,
        "param_names": param_names,
    }
    json.dumps(meta)  # fail here, naming nothing pickled, if an optimizer keeps exotic state
    return tensors, meta


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = []
    for group in meta["param_groups"]:
        # JSON turned tuples (AdamW's betas) into lists; give optimizers back what they stored.
        groups.append(
            {k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in group.items()}
        )
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """This process's RNG states: torch CPU (and CUDA when initialised), numpy's global, python's."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) != torch.cuda.device_count():
            raise CheckpointError(
                f"checkpoint holds RNG states of {len(cuda_states)} CUDA devices, this process sees "
                f"{torch.cuda.device_count()}"
            )
        torch.cuda.set_rng_state_all(cuda_states)


def rng_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    py_version, py_internal, py_gauss = state["python"]
    tensors = {
        "torch": state["torch"].clone(),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
    }
    for i, s in enumerate(state.get("cuda", [])):
        tensors[f"cuda.{i}"] = s.clone()
    meta = {
        "numpy": json.dumps([np_name, int(np_pos), int(np_has_gauss), float(np_gauss)]),
        "python": json.dumps([py_version, py_gauss]),
        "cuda_devices": str(len(state.get("cuda", []))),
    }
    return tensors, meta


def rng_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, Any]:
    np_name, np_pos, np_has_gauss, np_gauss = json.loads(meta["numpy"])
    py_version, py_gauss = json.loads(meta["python"])
    state: dict[str, Any] = {
        "torch": tensors["torch"],
        "numpy": (np_name, tensors["numpy_keys"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss),
        "python": (py_version, tuple(int(v) for v in tensors["python_internal"].tolist()), py_gauss),
    }
    n_cuda = int(meta.get("cuda_devices", "0"))
    if n_cuda:
        state["cuda"] = [tensors[f"cuda.{i}"] for i in range(n_cuda)]
    return state


# ------------------------------------------------------------------------------------------- the files


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


def write_model_and_optimizer(
    directory: Path,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    param_names: list[str],
    trainer_state: dict[str, Any],
) -> None:
    """The process-independent part of a checkpoint (written by the main process)."""
    save_file(model_state, str(directory / "model.safetensors"), metadata={"format": str(FORMAT_VERSION)})
    opt_tensors, opt_meta = optimizer_to_files(optimizer_state, param_names)
    save_file(opt_tensors, str(directory / "optimizer.safetensors"), metadata={"format": str(FORMAT_VERSION)})
    write_json(directory / "optimizer.json", opt_meta)
    write_json(directory / "trainer.json", {"format": FORMAT_VERSION, **trainer_state})


def write_rng(directory: Path, rank: int, state: dict[str, Any] | None = None) -> None:
    tensors, meta = rng_to_files(state if state is not None else capture_rng())
    save_file(tensors, str(directory / f"rng-rank{rank}.safetensors"), metadata=meta)


@dataclass
class Checkpoint:
    path: Path
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    param_names: list[str]
    trainer: dict[str, Any]
    rng: dict[str, Any] | None  # this process's; None when the checkpoint came from fewer processes


def read_checkpoint(directory: Path, rank: int = 0) -> Checkpoint:
    directory = Path(directory)
    need = ["model.safetensors", "optimizer.safetensors", "optimizer.json", "trainer.json"]
    absent = [n for n in need if not (directory / n).is_file()]
    if absent:
        raise CheckpointError(f"{directory}: not a complete checkpoint (missing {absent})")
    trainer = json.loads((directory / "trainer.json").read_text(encoding="utf-8"))
    if trainer.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint format {trainer.get('format')} is not {FORMAT_VERSION}"
        )
    opt_meta = json.loads((directory / "optimizer.json").read_text(encoding="utf-8"))
    optimizer = optimizer_from_files(load_file(str(directory / "optimizer.safetensors")), opt_meta)
    rng = None
    rng_path = directory / f"rng-rank{rank}.safetensors"
    if rng_path.is_file():
        from safetensors import safe_open

        with safe_open(str(rng_path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
        rng = rng_from_files(tensors, meta)
    return Checkpoint(
        path=directory,
        model=load_file(str(directory / "model.safetensors")),
        optimizer=optimizer,
        param_names=list(opt_meta["param_names"]),
        trainer=trainer,
        rng=rng,
    )
