"""Fine-tune the audio decoder (the vocoder) of a checkpoint on a spectral loss, encoder frozen.

    python -m train.vocoder runs/quick/full --steps 800 -o runs/quick/full_voc

The joint training stops the autoencoders early and its waveform L1 term pulls a decoder that cannot match
the phase of noisy impact sounds towards silence (output ~10x too quiet). With the encoder frozen the audio
latents -- and so the trained denoiser -- stay valid, and the decoder can learn to make sound with the right
spectral envelope from them: multi-resolution STFT magnitude (log and linear) plus an RMS-envelope term.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from .checkpoints import TOKENIZER_FILES, CheckpointError, load_checkpoint, load_ema, save_checkpoint
from .losses import to_device
from .train import TrainConfig, _clip_arrays, _floats, make_clips, stft_loss

log = logging.getLogger(__name__)


def envelope_loss(x: torch.Tensor, y: torch.Tensor, win: int = 256) -> torch.Tensor:
    """L1 between log RMS envelopes of waveforms [B, W] on windows of `win` samples (onsets and loudness)."""
    def env(a):
        return torch.log(a[:, : a.shape[1] // win * win].reshape(a.shape[0], -1, win).pow(2).mean(-1) + 1e-6)
    return (env(x) - env(y)).abs().mean()


def finetune_decoder(model, wavs: torch.Tensor, steps: int, batch: int = 8, lr: float = 1e-3, seed: int = 0,
                     seg_frames: int = 32) -> dict:
    """Train model.audio_ae.decoder on crops of wavs [C, W] (on the model's device); the encoder and its
    normalisation are unchanged."""
    ae, hop = model.audio_ae, model.cfg.audio_hop
    for p in ae.parameters():
        p.requires_grad_(False)
    for p in ae.decoder.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(ae.decoder.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    seg = hop * seg_frames
    logs: dict = {}
    for step in range(steps):
        idx = to_device(torch.randint(len(wavs), (min(batch, len(wavs)),), generator=gen), wavs.device)
        off = int(torch.randint(max(1, wavs.shape[1] - seg) // hop, (1,), generator=gen)) * hop
        w = wavs[idx, off: off + seg]
        with torch.no_grad():
            z = ae.encode(w)  # [B, T, C_a], normalised as the denoiser sees it
        rec = ae.decode(z)
        ls, le = stft_loss(rec, w), envelope_loss(rec, w)
        loss = ls + le
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.decoder.parameters(), 1.0)
        opt.step()
        logs = {"stft": ls.detach(), "envelope": le.detach()}
        if step % 50 == 0 or step == steps - 1:
            log.info("vocoder step %d %s", step, _floats(logs))
    for p in ae.parameters():
        p.requires_grad_(False)
    return _floats(logs)


def copy_decoder(model, source: str | os.PathLike) -> None:
    """Load the audio decoder of another checkpoint whose audio encoder (and normalisation) is identical."""
    other, _, _ = load_checkpoint(source, ema=False)
    mine, theirs = model.audio_ae.state_dict(), other.audio_ae.state_dict()
    for k, v in mine.items():
        if not k.startswith("decoder.") and not torch.equal(v, theirs[k]):
            raise CheckpointError(f"--decoder-from {source}: its audio encoder differs from this checkpoint's ({k})")
    model.audio_ae.decoder.load_state_dict(other.audio_ae.decoder.state_dict())


def main(argv=None):
    from .cli import (
        check_target,
        checked_inputs,
        device_of,
        exclusive,
        fail,
        log_setup,
        use_cores,
        vocoder_parser,
        writable_folder,
    )

    a = vocoder_parser().parse_args(argv)
    dev = device_of(a)
    log_setup()
    checked_inputs(("checkpoint", a.checkpoint), ("--decoder-from", a.decoder_from))
    out = Path(os.path.abspath(a.out))
    check_target(out, "-o", a.checkpoint, a.overwrite, in_place="-o CHECKPOINT writes in place")
    writable_folder(out, "-o")
    use_cores()
    try:
        with exclusive(out, "-o"):
            _finetune(a, out, dev)
    except CheckpointError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; nothing saved", 130)
    except OSError as e:
        fail(f"cannot write the checkpoint: {e}", 1)


def _finetune(a, out: Path, dev: torch.device) -> None:
    """Fine-tune the decoder of a.checkpoint as the options say and save the result to `out`."""
    model, opt_sd, state = load_checkpoint(a.checkpoint, ema=False)
    tc = TrainConfig.from_dict(state.get("train_config") or {})
    if a.data:
        tc = replace(tc, data=a.data)
    from .cli import check_tools, fail
    from .data.folder import DataError, read_index

    def data_problem(e: DataError, hint: str = ""):
        fail(f"--data: {e}" if a.data else f"{a.checkpoint} trained on --data: {e}{hint}")

    if a.steps:
        if tc.data:  # the run's own clips (or --data): the folder must still be there, checked before any work
            try:
                read_index(tc.data, model.cfg.audio_streams)
            except DataError as e:
                data_problem(e, " (moved? give --data DIR)")
        else:
            check_tools(tc.kinds)  # before any work, copy_decoder's included
    if a.decoder_from:
        copy_decoder(model, a.decoder_from)
        state["vocoder_from"] = str(a.decoder_from)
    t0 = time.time()
    model.to(dev)
    if a.steps:
        try:
            clips = make_clips(tc, model.cfg)
        except DataError as e:  # a clip that does not decode or is too short
            data_problem(e)
        wavs = torch.cat([_clip_arrays(c, model.cfg)[1] for c in clips]).to(dev)  # [C*S, W]
        state["vocoder_logs"] = finetune_decoder(model, wavs, a.steps, a.batch, a.lr, tc.seed)
    state["vocoder_steps"] = state.get("vocoder_steps", 0) + a.steps
    log.info("vocoder fine-tuned in %.0f s", time.time() - t0)
    src = Path(a.checkpoint)
    tok = {n: (src / n).read_text() for n in TOKENIZER_FILES if (src / n).exists()}
    # the denoiser's optimizer state passes through: it covers the denoiser, not the audio decoder trained here
    save_checkpoint(out, model, opt_sd, state, tok, load_ema(src, dict(model.named_parameters())) or None)


if __name__ == "__main__":
    main()
