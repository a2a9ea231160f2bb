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


def _flatten_optimizer(opt: torch.optim.Optimizer | dict) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt if isinstance(opt, dict) else opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = _host(v)
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _host(t: torch.Tensor) -> torch.Tensor:
    """A tensor as safetensors writes it: on the CPU (a GPU run's weights too), contiguous."""
    return t.detach().cpu().contiguous()


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike, model: HarmonyModel, optimizer: torch.optim.Optimizer | dict | None = None,
    state: dict | None = None, tokenizers: dict[str, str] | None = None, ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint folder atomically. `optimizer`: an optimizer or its state dict (as load_checkpoint
    gives it); `tokenizers` maps file name -> tokenizer JSON text; `ema` maps parameter names to their
    exponential moving averages (ema.safetensors)."""
    path = Path(path)
    if path.is_file() or path.is_symlink() or (path.is_dir() and foreign_files(path)):
        raise FileExistsError(f"{path}: not a checkpoint folder (or holds other files); refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path.parent, path.name)  # files and folder get normal permissions, as a plain save would
    try:
        save_file({k: _host(v) for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))
        (tmp / "state.json").write_text(json.dumps(state or {}, indent=2))
        if ema:
            save_file({k: _host(v) for k, v in ema.items()}, str(tmp / "ema.safetensors"))
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


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or damaged (one line, naming the file)."""


# what save_checkpoint writes in a folder (tokenizer files by the names training gives them)
TOKENIZER_FILES = ("tokenizer_text.json", "tokenizer_speech.json")  # caption, transcript
FILES = ("model.safetensors", "config.json", "state.json", "ema.safetensors", "optimizer.safetensors",
         "optimizer.json", *TOKENIZER_FILES)


def is_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / "model.safetensors").is_file() and (path / "config.json").is_file()


def foreign_files(path: str | os.PathLike) -> list[str]:
    """Names in a folder that a checkpoint does not write: a save, which replaces the folder, would delete them."""
    return sorted(p.name for p in Path(path).iterdir() if p.name not in FILES)


def checked_config(d) -> HarmonyConfig:
    """HarmonyConfig from a dict (config.json, overrides), each value of its field's type (an int does for a
    float) and the whole buildable (HarmonyConfig.check): a string or null would otherwise load and fail later,
    deep inside training, export or sampling."""
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    defaults = HarmonyConfig().to_dict()
    for k, v in d.items():
        if k not in defaults:
            raise ValueError(f"unknown field {k!r}")
        want = type(defaults[k])
        if not (type(v) is want or (want is float and type(v) is int)):
            raise ValueError(f"{k} is {v!r:.40}, not {want.__name__}")
    return HarmonyConfig.from_dict(d).check()


def _read_json(file: Path):
    """A checkpoint's JSON file; a damaged one is a CheckpointError naming the file."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    except OSError as e:  # missing, a folder, unreadable
        raise CheckpointError(f"{file}: cannot be read ({e.strerror or e})") from None


def read_meta(path: str | os.PathLike) -> tuple[HarmonyConfig, dict]:
    """A checkpoint's config and training state, checked, without loading any weights."""
    path = Path(path)
    try:
        found = is_checkpoint(path)
    except OSError as e:  # a name too long, ...
        raise CheckpointError(f"{path}: {e.strerror or e}") from None
    if not found:
        raise CheckpointError(f"{path}: not a harmony-rt checkpoint (model.safetensors + config.json)")
    try:
        cfg = checked_config(_read_json(path / "config.json"))
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    state = _read_json(path / "state.json") if (path / "state.json").exists() else {}
    if (path / "optimizer.safetensors").exists() and not (path / "optimizer.json").is_file():
        raise CheckpointError(f"{path}: optimizer.safetensors without its optimizer.json")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / 'state.json'}: not a JSON object")
    step = state.get("step", 0)
    if type(step) is not int or step < 0:
        raise CheckpointError(f"{path / 'state.json'}: step is {step!r:.40}, not a step count")
    return cfg, state


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors' own error types: a truncated or foreign file
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{file}: cannot be read ({why})") from None


def load_checkpoint(path: str | os.PathLike, optimizer_for: HarmonyModel | None = None, ema: bool = True,
                    optimizer: bool = True):
    """-> (model, optimizer state dict or None, training state). No pickle: safetensors + JSON only.

    ema: use the EMA weights where the checkpoint has them (what export and evaluation want); training
    resumes with ema=False (the raw weights) and reads the averages with `load_ema`. optimizer=False: the
    optimizer files are not read (export has no use for them; None is returned). A missing, incomplete or
    damaged checkpoint (of the files read) is a CheckpointError.
    """
    path = Path(path)
    cfg, state = read_meta(path)
    model = HarmonyModel(cfg)
    try:
        model.load_state_dict(_load_tensors(path / "model.safetensors"))
    except RuntimeError as e:  # missing / unexpected keys, shapes that do not fit the config
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]  # the first says only "Error(s) in ..."
        raise CheckpointError(f"{path / 'model.safetensors'}: does not fit config.json "
                              f"({lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__})") from None
    if ema and (path / "ema.safetensors").is_file():
        params = dict(model.named_parameters())
        averages = load_ema(path, params)
        with torch.no_grad():
            for k, v in averages.items():
                params[k].copy_(v)
    opt_sd = None
    if optimizer and (path / "optimizer.safetensors").exists():
        try:
            opt_sd = _unflatten_optimizer(_load_tensors(path / "optimizer.safetensors"),
                                          _read_json(path / "optimizer.json"))
        except CheckpointError:  # already names its file
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{path / 'optimizer.json'}: not an optimizer state ({e})") from None
    return model, opt_sd, state


def load_ema(path: str | os.PathLike, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The EMA weights of a checkpoint ({} when it has none), each checked against `params` (the model's
    parameters by name): a name or shape they do not have is a CheckpointError naming ema.safetensors."""
    f = Path(path) / "ema.safetensors"
    averages = _load_tensors(f) if f.is_file() else {}
    unknown = sorted(set(averages) - set(params))
    if unknown:
        raise CheckpointError(f"{f}: unknown parameters {unknown[:3]}")
    for k, v in averages.items():
        if v.shape != params[k].shape:
            raise CheckpointError(f"{f}: {k} has shape {list(v.shape)}, the model's is {list(params[k].shape)}")
    return averages
