"""Training state for exact resume, and the crash-safe way checkpoints are written.

`training_state.pt` holds the last weights themselves (and their moving average with `weight_ema`), with optimizer, scheduler, grad scaler, epoch,
history and every rank's RNG states, all as tensors and plain containers: it loads with
`torch.load(weights_only=True)`, so a planted file can never run code. It is the commit point of a
checkpoint: written first (temp name, fsync, rename, directory fsync), then `model_last.pt` and
`model_best.pt`; `--resume` restores from it alone and repairs weight files a kill left behind.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError

STATE_FILE = "training_state.pt"
STATE_FORMAT = 2  # 1: medseg < issue 14 (pickled numpy RNG states, weights beside it only)
TMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<pid>[suffix]" (also medseg.io.atomic's)


def rng_states() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) global RNG states as tensors and plain values."""
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of `rng_states`."""
    import torch

    py = states["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = states["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def tensors_sha256(state_dict: dict[str, Any]) -> str:
    """sha256 over a state_dict's names, dtypes, shapes and tensor bytes, in order (not torch.save's framing)."""
    import torch

    h = hashlib.sha256()
    for k, v in state_dict.items():
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _step(name: str, path: Path) -> None:
    """Called before each step of a checkpoint write; a no-op (the kill tests replace it)."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed write left in `folder` ("." names with ".tmp-"); return them."""
    folder = Path(folder)
    stale = [p for p in folder.glob(".*") if TMP_MARK in p.name and p.is_file()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and TMP_MARK in path.name


def save_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save `obj` to `path` durably: temp name, fsync, rename, fsync of the folder.

    A kill at any instant leaves either the old file or the new one (plus, at worst, a temp file
    that the next write or resume removes).
    """
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        _step("write", path)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            _step("fsync", path)
            os.fsync(f.fileno())
        _step("rename", path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _step("fsync dir", path)
    _fsync_dir(path.parent)
    return path


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a training state (see `save_atomic`)."""
    return save_atomic(path, state)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training state with `weights_only=True`; anything else is refused with one line.

    Never unpickles arbitrary objects: a planted file that would run code fails to load instead.
    """
    import torch

    path = Path(path)
    remove_stale_tmp(path.parent)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"{path}: refused to load: not a training state that loads as plain tensors ({type(exc).__name__}); "
            "it was not written by this medseg version or was tampered with; delete it and train without --resume"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or "model" not in state:
        found = state.get("format", 1) if isinstance(state, dict) else type(state).__name__
        raise InputError(
            f"{path}: training state format {found}, expected {STATE_FORMAT}; written by another medseg version, "
            "so it cannot resume exactly; train without --resume"
        )
    return state


def load_weights(path: str | os.PathLike) -> dict[str, Any] | None:
    """A state_dict file's tensors, or None when it is missing or unreadable."""
    import torch

    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:
        return None


def repair_weights(folder: str | os.PathLike, state: dict[str, Any], last_name: str, best_name: str) -> list[str]:
    """Rewrite weight files that do not match the committed `state` (a kill came between the
    state's rename and theirs); return the names rewritten."""
    folder = Path(folder)
    fixed = []
    averaged = state.get("averaged")  # with `weight_ema` the weight files hold the average, not the live weights
    model = averaged["weights"] if averaged else state["model"]
    model_sha = tensors_sha256(model)
    want = {last_name: model_sha, best_name: state.get("best_sha256")}
    for name, sha in want.items():
        if sha is None:
            continue
        current = load_weights(folder / name)
        if current is not None and tensors_sha256(current) == sha:
            continue
        if sha == model_sha:  # the committed epoch's weights (the last, or a new best)
            save_atomic(folder / name, model)
            fixed.append(name)
    return fixed


def save_weights(path: str | os.PathLike, state_dict: dict[str, Any]) -> Path:
    """A plain state_dict loadable with torch.load(weights_only=True), written atomically."""
    return save_atomic(path, {k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
