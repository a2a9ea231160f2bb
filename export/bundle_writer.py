"""Checkpoint -> bundle: export every component to ONNX, check each against PyTorch, write the manifest.

The bundle is assembled in a hidden temp folder beside the target (`.<name>.<random>`) and renamed into place,
so an interrupted export leaves the old bundle (or nothing), never a half-written one. A failed export removes
its temp folder; one killed outright (SIGKILL, power loss) cannot, and the next export to the same place names
what was left. A target that is a symlink is followed (the folder it names is replaced, the link kept); a
mount point cannot be replaced and is refused.

Precision variants (`add_variants`) sit beside each fp32 main graph as `<component>.<precision>.onnx`,
listed under the component's `variants` with their error vs fp32 measured on a held-out real sampler run;
the plugin graph (`--custom-op`) is the denoiser's `fp32-plugin` variant (export/custom_op.py), and the
passes of `precision.PLUGIN_PRECISIONS` over it are its `<precision>-plugin` variants (`--custom-op
--precision fp16` writes `fp16-plugin`), each flagged `plugin` like `fp32-plugin`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from torch.export import Dim

from harmony_rt import __version__, publish
from harmony_rt.bundle import MANIFEST, atomic_write_bytes, replace_dir, temp_dir
from harmony_rt.contract import FILES, FORMAT_VERSION, TIME_CONVENTION, resolve
from harmony_rt.digests import sha256_file
from harmony_rt.errors import HarmonyError, one_line
from train.checkpoints import TOKENIZER_FILES, load_checkpoint
from train.model import HarmonyModel

from . import calibration, custom_op, precision
from .components import component_modules, example_inputs, symbol_sizes
from .graphfile import graph_entry, save_graph

log = logging.getLogger(__name__)

OPSET = 23  # ONNX Attention, RMSNormalization and Gelu(tanh): single ORT kernels
FP32_TOLERANCE = 1e-3  # max abs error of ORT vs PyTorch for an fp32 graph


class ExportError(HarmonyError):
    """Export failed (a parity check past tolerance, an unreadable checkpoint)."""


def export_component(name: str, module, spec, model: HarmonyModel, path: Path) -> None:
    """Trace one component to ONNX with the contract's names and symbolic dims."""
    dims: dict[str, Dim] = {}
    dynamic = []
    for t in spec.inputs:
        dynamic.append({i: dims.setdefault(d, Dim(d)) for i, d in enumerate(t.shape) if isinstance(d, str)} or None)
    args = example_inputs(name, spec, model, symbol_sizes(model, 0), seed=0)
    # "torchvision is not installed. Skipping torchvision::nms" x4 per graph: noise, we use no torchvision ops
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module, args, dynamo=True, opset_version=OPSET, dynamic_shapes=tuple(dynamic),
            input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
            verbose=False, optimize=True,
        )
    m = prog.model_proto  # named and written once (no save / load / save round trip through the disk)
    _name_dims(m, spec)
    save_graph(m, path)


def _name_dims(m: onnx.ModelProto, spec) -> None:
    """Give every symbolic dim of the graph's inputs / outputs its contract name (the exporter renames)."""
    for vis, specs in ((m.graph.input, spec.inputs), (m.graph.output, spec.outputs)):
        for vi, t in zip(vis, specs):
            for d, want in zip(vi.type.tensor_type.shape.dim, t.shape):
                if isinstance(want, str):
                    d.dim_param = want


def parity(name: str, module, spec, model: HarmonyModel, path: Path, sess=None) -> float:
    """Max abs difference ORT vs PyTorch over two input shapes (the second checks the dynamic dims).
    NaN / Inf in either output is an ExportError (a NaN difference would pass max() and any tolerance)."""
    sess = sess or ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for variant in (0, 1):
        args = example_inputs(name, spec, model, symbol_sizes(model, variant), seed=10 + variant)
        with torch.no_grad():
            ref = module(*args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = sess.run(None, {t.name: a.numpy() for t, a in zip(spec.inputs, args)})
        for r, g in zip(ref, got):
            if tuple(r.shape) != g.shape:
                raise ExportError(f"{name}: ORT output shape {g.shape} != PyTorch {tuple(r.shape)}")
            r = r.numpy()
            if not np.isfinite(r).all():
                owned = {id(t) for t in module.state_dict(keep_vars=True).values()}  # named as in the model
                bad = _first_non_finite({k: t for k, t in model.state_dict(keep_vars=True).items() if id(t) in owned})
                why = f"the checkpoint's weights are not finite ({bad})" if bad else "on finite weights and inputs"
                raise ExportError(f"{name}: PyTorch gives NaN/Inf outputs: {why}")
            if not np.isfinite(g).all():
                raise ExportError(f"{name}: ONNX Runtime gives NaN/Inf outputs where PyTorch's are finite")
            if r.size:
                worst = max(worst, float(np.abs(r - g).max()))
    return worst


def _first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN / Inf, None when all are finite."""
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            return k
    return None


def _check_weights(checkpoint: Path, model: HarmonyModel) -> None:
    """Refuse weights holding NaN / Inf (a diverged run) before minutes of tracing, naming the first one."""
    bad = _first_non_finite(model.state_dict())
    if bad is None:
        return
    src = checkpoint / "model.safetensors"
    ema = checkpoint / "ema.safetensors"
    if ema.is_file():  # load_checkpoint takes the averages from here where it has them
        with safe_open(str(ema), "pt") as f:
            src = ema if bad in f.keys() else src
    raise ExportError(f"{src}: tensor {bad} holds NaN/Inf values (did training diverge?); refusing to export it")


# bundle file key (harmony_rt.contract.FILES), file name (as the checkpoint and the bundle call it), the
# model's vocabulary field
TOKENIZERS = tuple(zip(FILES, TOKENIZER_FILES, ("text_vocab", "speech_vocab"), strict=True))


def _read_tokenizers(checkpoint: Path, cfg) -> dict[str, bytes]:
    """The checkpoint's tokenizer files, checked before any tracing: present, loadable by `tokenizers` (as
    generate loads them) and no id past the model's vocabulary. -> {file name: its bytes, for the bundle}."""
    files = {}
    for _, fname, field in TOKENIZERS:
        src = checkpoint / fname
        try:
            data = src.read_bytes()
        except FileNotFoundError:
            raise ExportError(f"{src}: checkpoint has no tokenizer file") from None
        except OSError as e:
            raise ExportError(f"{src}: cannot read the tokenizer file ({e.strerror or e})") from None
        try:
            vocab = Tokenizer.from_str(data.decode("utf-8")).get_vocab(with_added_tokens=True)
        except Exception as e:  # the tokenizers library raises plain Exceptions on bad JSON
            raise ExportError(f"{src}: not a tokenizer file ({one_line(str(e) or type(e).__name__, 200)})") from None
        n, limit = max(vocab.values(), default=-1) + 1, getattr(cfg, field)
        if n > limit:
            raise ExportError(f"{src}: the tokenizer has {n} ids, more than the model's {field} ({limit})")
        files[fname] = data
    return files


def manifest_for(model: HarmonyModel, components: dict, files: dict, extra: dict) -> dict:
    cfg = model.cfg
    trained = extra.get("training", {}).get("train_config") or {}
    max_seconds = cfg.max_latent_frames * cfg.video_t_stride / cfg.fps
    # training crops each reference from a clip `seconds` long (train.train.make_batch): no longer one was seen
    ref_max = min(trained.get("ref_seconds", [1.0, 3.0])[1], trained.get("seconds", math.inf))
    return {
        "format_version": FORMAT_VERSION,
        "producer": f"harmony-rt {__version__} export",
        "variant": "unison" if cfg.audio_streams == 2 else "harmony",
        "model_config": cfg.to_dict(),
        "geometry": cfg.geometry().to_dict(),
        "sampling": {
            "time": TIME_CONVENTION,
            "shift": cfg.shift, "steps": cfg.steps, "scheduler": "euler", "guidance": "sync",
            "s_v": cfg.s_v, "s_a": cfg.s_a, "cfg_scale": cfg.cfg_scale,
            "max_ref_seconds": ref_max,  # longest reference the model saw in training; longer ones are cut
            "seconds": min(max_seconds, trained.get("seconds", max_seconds)),  # default clip length: as trained
            "null_audio": "audio_encoder(silence)",
            "null_video": "video_encoder(first frame repeated; mid-grey without an input image)",
        },
        "components": components,
        "files": files,
        **extra,
    }


def check_target(checkpoint: Path, out: Path) -> None:
    """harmony_rt.publish.check_target for an export of `checkpoint`, its refusals as ExportError."""
    try:
        publish.check_target(checkpoint, out, "checkpoint")
    except HarmonyError as e:
        raise ExportError(str(e)) from None


def _warn_untrained(checkpoint, state: dict) -> None:
    """A run stopped after its autoencoders (--steps 0, or interrupted there) exports a random denoiser: say so
    (not of a fine-tune's, --init-from: its weights are the source checkpoint's from step 0)."""
    if not state.get("step") and not (state.get("train_config") or {}).get("init_from"):
        log.warning("%s: its denoiser has not trained (step 0): the bundle will generate noise", checkpoint)


def export_bundle(checkpoint: str | os.PathLike, out: str | os.PathLike, tolerance: float = FP32_TOLERANCE,
                  precisions="fp32", custom_op: bool = False) -> Path:
    """Write a complete, verified bundle for `checkpoint` at `out` (replacing an existing one atomically).
    Refused before any work: an `out` that overlaps the checkpoint, is a file or a non-empty non-bundle folder,
    or cannot be made (an unwritable place); then, before any tracing, weights holding NaN / Inf and tokenizer
    files that are missing, do not load or hold ids past the model's vocabulary.

    precisions: 'fp32,fp16,int8,fp8' (or a list); each extra one becomes a variant (see `add_variants`).
    custom_op: also write the denoiser with RoPEAlignedAttention nodes (variant `fp32-plugin`).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if out.is_symlink():  # `current -> v3`: v3 is replaced, the link stays (renaming over it dropped the link)
        link, out = out, Path(os.path.realpath(out))
        log.info("%s is a symlink: writing the bundle it names, %s", link, out)
    check_target(checkpoint, out)
    try:
        extra = precision.parse_precisions(precisions)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if custom_op and importlib.util.find_spec("onnxruntime_extensions") is None:
        raise ExportError("--custom-op checks the plugin graph with onnxruntime-extensions: "
                          "pip install onnxruntime-extensions")
    try:
        model, _, state = load_checkpoint(checkpoint, optimizer=False)  # export needs no optimizer state
    except Exception as e:  # truncated weights, a config that does not fit them, ...: one line, not a traceback
        if (checkpoint / MANIFEST).is_file():  # a bundle given where its checkpoint belongs
            raise ExportError(f"{checkpoint} is a bundle (it has {MANIFEST}), not a training checkpoint; export "
                              "reads the checkpoint folder `python -m train.train -o` wrote") from None
        why = one_line(str(e) or type(e).__name__, 240)
        if not why.startswith(str(checkpoint)):  # the checkpoint's own errors name it already
            why = f"{checkpoint}: {why}"
        raise ExportError(f"cannot read checkpoint {why}") from None
    model.eval()
    _check_weights(checkpoint, model)
    _warn_untrained(checkpoint, state)
    tokenizers = _read_tokenizers(checkpoint, model.cfg)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        publish.warn_leftovers(out)
        tmp = temp_dir(out.parent, out.name)
    except OSError as e:
        raise ExportError(f"cannot write the bundle {out}: {e.strerror or e}") from None
    try:
        specs = resolve(model.cfg.geometry().to_dict())
        components = {}
        for name, module in component_modules(model).items():
            t0 = time.time()
            path = tmp / f"{name}.onnx"
            export_component(name, module, specs[name], model, path)
            err = parity(name, module, specs[name], model, path)
            log.info("exported %s: max abs err %.2e (%.1f s)", name, err, time.time() - t0)
            if not err <= tolerance:
                raise ExportError(f"{name}: ONNX Runtime differs from PyTorch by {err:.3g} > tolerance {tolerance}")
            components[name] = {
                **graph_entry(path), "precision": "fp32",
                "io": specs[name].to_dict(), "parity_max_abs_err": err, "parity_tolerance": tolerance,
            }
        files = {}
        for key, fname, _ in TOKENIZERS:  # the bytes checked before tracing, not whatever the file holds now
            (tmp / fname).write_bytes(tokenizers[fname])
            files[key] = {"file": fname, "sha256": sha256_file(tmp / fname)}
        training = {"training": {k: state.get(k) for k in ("step", "train_seconds", "train_config") if k in state}}
        tc = training["training"].get("train_config")
        if isinstance(tc, dict):  # a bundle is shared: the run's local folders by name only, not their paths
            training["training"]["train_config"] = {k: Path(v).name if k in ("data", "init_from") and v else v
                                                    for k, v in tc.items()}
        manifest = manifest_for(model, components, files, training)
        atomic_write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())
        if custom_op:
            add_plugin_graph(tmp, model)
        if extra:
            add_variants(tmp, extra)
        replace_dir(tmp, out)
    except OSError as e:  # a full disk, a quota, an I/O error while writing: the bundle's name, not a bug report
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"cannot write the bundle {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle written to %s", out)
    return out


# ------------------------------------------------------------------------------------------------ variants

EVAL_CALLS = 12  # denoiser calls of the held-out run the errors are measured on
CALIB_CALLS = 64  # denoiser calls (spread over the noise levels) ranges are calibrated on
WARN_REL_ERR = 0.1  # a variant further than this from fp32 is written with a warning (int8 of trained models: ~4e-2)


def _cpu_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _load_manifest(bundle_dir: Path) -> dict:
    return json.loads((bundle_dir / MANIFEST).read_text("utf-8"))


def add_variants(bundle_dir: str | os.PathLike, precisions, prompts=calibration.CALIBRATION_PROMPTS,
                 eval_prompt=calibration.EVAL_PROMPT, steps: int | None = None) -> dict:
    """Write the variants `precisions` ('fp16,int8,fp8' or a list) of every component they suit
    (`precision.PLAN`) into an fp32 bundle folder and update its manifest in place (atomically).

    A component with a plugin graph (`fp32-plugin`, from `add_plugin_graph`) also gets `<precision>-plugin`
    for each precision in `precision.PLUGIN_PRECISIONS` (`_add_plugin_variant`).

    Calibration (int8 static, fp8): denoiser feeds recorded from fp32 generations of `prompts`.
    Errors: every variant vs its fp32 graph on the feeds of one held-out generation (`eval_prompt`).
    steps: ODE steps of those generations (default: the bundle's)."""
    bundle_dir = Path(bundle_dir)
    extra = precision.parse_precisions(precisions)
    manifest = _load_manifest(bundle_dir)
    comps = manifest["components"]
    if not extra:
        return manifest
    t0 = time.time()
    calib = calibration.record_feeds(bundle_dir, prompts, steps) if any(p in ("int8", "fp8") for p in extra) else {}
    held_out = calibration.record_feeds(bundle_dir, [eval_prompt], steps)
    log.info("recorded real feeds in %.1f s", time.time() - t0)
    for prec in extra:
        targets = precision.PLAN[prec] or tuple(comps)
        for name in (c for c in comps if c in targets):
            t0 = time.time()
            src = bundle_dir / comps[name]["file"]
            dst = bundle_dir / f"{name}.{prec}.onnx"
            cal = calibration.subsample(calib.get(name, []), CALIB_CALLS)
            info = precision.build_variant(prec, name, src, dst, cal)
            if info is None:  # only the quantizing passes, aimed at the components PLAN names: asked, not made
                raise ExportError(f"{name} ({prec}): no MatMul to quantize in the scopes "
                                  f"{list(precision.QUANT_SCOPES.get(name, ()))} (does the graph carry the "
                                  "exporter's module scopes?); the variant cannot be written")
            feeds = calibration.subsample(held_out.get(name, []), EVAL_CALLS)
            abs_err, rel_err = precision.graph_error(_cpu_session(src), _cpu_session(dst), feeds)
            if not np.isfinite(abs_err):
                raise ExportError(f"{name} ({prec}): the variant produces non-finite outputs")
            comps[name].setdefault("variants", {})[prec] = {
                **graph_entry(dst), **info,
                "max_abs_err": abs_err, "max_rel_err": rel_err,
                "error_inputs": f"{len(feeds)} held-out real {name} call(s)",
            }
            log.info("%s %s: max abs err %.2e, rel %.2e vs fp32 (%.1f s)", name, prec, abs_err, rel_err,
                     time.time() - t0)
            if rel_err > WARN_REL_ERR:
                log.warning("%s %s is far from fp32 (max relative error %.2g on held-out calls): compare its "
                            "output with fp32 before using it", name, prec, rel_err)
        if prec in precision.PLUGIN_PRECISIONS:
            for name in (c for c in comps if custom_op.PLUGIN_VARIANT in comps[c].get("variants", {})):
                feeds = calibration.subsample(held_out.get(name, []), EVAL_CALLS)
                _add_plugin_variant(bundle_dir, name, comps[name], prec, feeds)
    manifest["precision_export"] = {
        "calibration_prompts": [vars(p) for p in prompts], "held_out_prompt": vars(eval_prompt), "steps": steps,
        "max_rel_err": "max |variant - fp32| / max |fp32| per output, worst over outputs and calls",
    }
    atomic_write_bytes(bundle_dir / MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest


def _add_plugin_variant(bundle_dir: Path, name: str, comp: dict, prec: str, feeds: list[dict]) -> None:
    """Variant `<prec>-plugin` of component `name` (manifest entry `comp`, updated in place): the `prec` pass
    over its `fp32-plugin` graph, with its error vs the fp32 main graph on the held-out `feeds`; ORT runs the
    custom nodes through the numpy reference (fp16 ones as `custom_op.HALF_CHECK` says)."""
    t0 = time.time()
    key = precision.plugin_variant(prec)
    source = comp["variants"][custom_op.PLUGIN_VARIANT]
    dst = bundle_dir / f"{name}.{key}.onnx"
    info = precision.build_variant(key, name, bundle_dir / source["file"], dst, None)
    io_types = precision.plugin_io_types(onnx.load(str(dst)))
    sess = custom_op.plugin_session(dst)
    abs_err, rel_err = precision.graph_error(_cpu_session(bundle_dir / comp["file"]), sess, feeds)
    if not np.isfinite(abs_err):
        raise ExportError(f"{name} ({key}): the variant produces non-finite outputs")
    names = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16"}
    combos = sorted({tuple(names.get(t, str(t)) for t in ts) for ts in io_types})  # distinct, ideally one
    comp["variants"][key] = {
        **graph_entry(dst), **info,
        "plugin": {**source["plugin"], "nodes": len(io_types), "source": custom_op.PLUGIN_VARIANT,
                   "io_order": ", ".join(custom_op.INPUTS) + " -> out", "io_types": [list(c) for c in combos]},
        "max_abs_err": abs_err, "max_rel_err": rel_err,
        "error_inputs": f"{len(feeds)} held-out real {name} call(s)",
        "error_runtime": custom_op.HALF_CHECK if info["plugin_types"]["fp16_nodes"] else "numpy reference",
    }
    log.info("%s %s: %d RoPEAlignedAttention nodes, max abs err %.2e, rel %.2e vs fp32 (%.1f s)", name, key,
             len(io_types), abs_err, rel_err, time.time() - t0)


def add_plugin_graph(bundle_dir: str | os.PathLike, model: HarmonyModel, tolerance: float = FP32_TOLERANCE) -> dict:
    """Export the denoiser with RoPEAlignedAttention nodes as variant `fp32-plugin`, checked against PyTorch
    and against the decomposed main graph (custom node run by the numpy reference through
    onnxruntime-extensions); update the manifest in place."""
    bundle_dir = Path(bundle_dir)
    manifest = _load_manifest(bundle_dir)
    comp = manifest["components"]["denoiser"]
    spec = resolve(manifest["geometry"])["denoiser"]
    dst = bundle_dir / f"denoiser.{custom_op.PLUGIN_VARIANT}.onnx"
    t0 = time.time()
    with custom_op.emit_custom_op():
        export_component("denoiser", model.denoiser, spec, model, dst)
    graph = onnx.load(str(dst))
    n_nodes = len(custom_op.custom_nodes(graph))
    if n_nodes == 0:
        raise ExportError("denoiser: the plugin graph has no RoPEAlignedAttention node")
    sess = custom_op.plugin_session(graph)
    err = parity("denoiser", model.denoiser, spec, model, dst, sess=sess)
    if not err <= tolerance:
        raise ExportError(f"denoiser plugin graph differs from PyTorch by {err:.3g} > tolerance {tolerance}")
    args = example_inputs("denoiser", spec, model, symbol_sizes(model, 1), seed=21)
    feeds = [{t.name: a.numpy() for t, a in zip(spec.inputs, args)}]
    abs_err, rel_err = precision.graph_error(_cpu_session(bundle_dir / comp["file"]), sess, feeds)
    comp.setdefault("variants", {})[custom_op.PLUGIN_VARIANT] = {
        **graph_entry(dst), "precision": "fp32",
        "plugin": {"op": f"{custom_op.OP_DOMAIN}::{custom_op.OP_NAME}", "nodes": n_nodes},
        "parity_max_abs_err": err, "parity_tolerance": tolerance,
        "max_abs_err": abs_err, "max_rel_err": rel_err, "error_inputs": "decomposed fp32 graph, example inputs",
    }
    log.info("denoiser plugin graph: %d RoPEAlignedAttention nodes, max abs err %.2e vs PyTorch, %.2e vs the "
             "decomposed graph (%.1f s)", n_nodes, err, abs_err, time.time() - t0)
    atomic_write_bytes(bundle_dir / MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest
