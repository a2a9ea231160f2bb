"""Checkpoints: a folder with model.safetensors, optimizer.safetensors, config.json, state.json and the
tokenizers. Written to a temp folder and renamed, so a kill leaves the old checkpoint or the new one."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harmony_rt.bundle import replace_dir, temp_dir

from .configs import HarmonyConfig
from .model import HarmonyModel

log = logging.getLogger(__name__)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike, model: HarmonyModel, optimizer: torch.optim.Optimizer | None = None,
    state: dict | None = None, tokenizers: dict[str, str] | None = None, ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint folder atomically. `tokenizers` maps file name -> tokenizer JSON text; `ema` maps
    parameter names to their exponential moving averages (ema.safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path.parent, path.name)  # files and folder get normal permissions, as a plain save would
    try:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))
        (tmp / "state.json").write_text(json.dumps(state or {}, indent=2))
        if ema:
            save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(meta))
        for name, text in (tokenizers or {}).items():
            (tmp / name).write_text(text)
        mode = tmp.stat().st_mode & 0o666  # what open() gives under the umask (mkdir applied it to the folder)
        for f in tmp.iterdir():
            f.chmod(mode)  # safetensors writes 0600
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved checkpoint %s", path)
    return path


def _config(d) -> HarmonyConfig:
    """HarmonyConfig from config.json, each value of its field's type (an int does for a float): a string or
    null would otherwise load and fail later, deep inside export or sampling."""
    if not isinstance(d, dict):
        raise ValueError("config.json is not a JSON object")
    defaults = HarmonyConfig().to_dict()
    for k, v in d.items():
        want = type(defaults.get(k, v))
        if not (type(v) is want or (want is float and type(v) is int)):
            raise ValueError(f"config.json: {k} is {v!r:.40}, not {want.__name__}")
    return HarmonyConfig.from_dict(d)


def _read_json(file: Path):
    """A checkpoint's JSON file; a damaged one is a ValueError naming the file."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None


def load_checkpoint(path: str | os.PathLike, optimizer_for: HarmonyModel | None = None, ema: bool = True):
    """-> (model, optimizer state dict or None, training state). No pickle: safetensors + JSON only.

    ema: use the EMA weights where the checkpoint has them (what export and evaluation want); training
    resumes with ema=False (the raw weights) and reads the averages with `load_ema`.
    """
    path = Path(path)
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a harmony-rt checkpoint (model.safetensors + config.json)")
    cfg = _config(_read_json(path / "config.json"))
    model = HarmonyModel(cfg)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    if ema and (path / "ema.safetensors").is_file():
        averages = load_ema(path)
        params = dict(model.named_parameters())
        unknown = sorted(set(averages) - set(params))
        if unknown:
            raise ValueError(f"{path}: ema.safetensors has unknown parameters {unknown[:3]}")
        with torch.no_grad():
            for k, v in averages.items():
                params[k].copy_(v)
    state = _read_json(path / "state.json") if (path / "state.json").exists() else {}
    opt_sd = None
    if (path / "optimizer.safetensors").exists():
        opt_sd = _unflatten_optimizer(
            load_file(str(path / "optimizer.safetensors")), _read_json(path / "optimizer.json")
        )
    return model, opt_sd, state


def load_ema(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The EMA weights of a checkpoint ({} when it has none)."""
    f = Path(path) / "ema.safetensors"
    return load_file(str(f)) if f.is_file() else {}
