"""Checkpoints of a run: model weights (safetensors), optimizer, scheduler, RNG states, step and data
cursor. Written into a temporary folder, every file fsynced, then renamed into place (and the parent
fsynced), so a run killed during a save keeps its previous checkpoint loadable; the last K are kept.

    run_dir/checkpoints/step-000004/{model.safetensors, state.pt, meta.json}
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

PREFIX = "step-"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_state(model) -> dict:
    """Named tensors to save: tied duplicates (lm_head sharing the embedding) are saved once."""
    seen, out = set(), {}
    for name, t in model.state_dict().items():
        key = t.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


def save_checkpoint(run_dir, step: int, *, model, optimizer, scheduler, extra: dict, keep_last: int = 2) -> Path:
    """Writes run_dir/checkpoints/step-{step:06d} atomically and prunes all but the newest keep_last."""
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        save_file(model_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                    "extra": extra}, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "complete": True}))
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same step replaces it: move the old one aside first
            old = root / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "meta.json").exists()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir) -> Optional[Path]:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_model_weights(path, model) -> None:
    """The checkpoint's model.safetensors into `model` in place; every key must match (a tied lm_head,
    saved once as the embedding, excepted)."""
    from safetensors.torch import load_file

    path = Path(path)
    weights = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tie = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    tied = {n for n in missing if n.endswith("lm_head.weight") and tie}
    if set(missing) - tied or unexpected:
        raise ValueError(f"checkpoint {path}: missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}")


def load_checkpoint(path, *, model, optimizer, scheduler) -> dict:
    """Restores model, optimizer, scheduler and RNG states in place; returns the saved `extra` dict
    (step, data cursor, ...)."""
    path = Path(path)
    load_model_weights(path, model)
    state = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["extra"]
