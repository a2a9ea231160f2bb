"""Training: autoencoders first, then the joint denoiser in the paper's three stages, in miniature.

    python -m train.train --size tiny --clips 16 --ae-steps 50 --steps 50 -o runs/tiny

Stages (fractions of --steps): (1) audio pre-training with a reference cut from the same clip,
(2) timbre disentanglement with a reference from another clip of the same speaker, (3) cross-task joint
audio-video training with CTS. Runs under torchrun (DDP, gloo on CPU) when WORLD_SIZE > 1.

Devices: `device` (CLI --device) places the model, the cached latents and every step's batch; random draws
stay on a CPU generator (the same stream on any device, continued exactly on resume; on a GPU the weights
of a resumed run are not bit-exact, some CUDA kernels being nondeterministic), checkpoints are written from
the CPU, so a run may resume on another device. `precision="bf16"` runs the denoiser stage (text / speech
encoders and denoiser, forward and backward) under bf16 autocast with fp32 weights, optimizer, norms,
residual streams and losses; the autoencoders always train (and encode) in fp32.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python train/train.py`: train/tokenizers.py would shadow the
    import sys  # tokenizers package and the imports below fail with a traceback

    print("error: run training as a module from the repository root: python -m train.train ...", file=sys.stderr)
    sys.exit(2)

import base64
import contextlib
import logging
import math
import os
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from harmony_rt.text import pad_ids, special_tokens

from .checkpoints import TOKENIZER_FILES, load_checkpoint, load_ema, save_checkpoint
from .configs import HarmonyConfig, get_config, within
from .losses import CTSBatch, cts_loss, forcing_loss, noise_like, noise_to, sample_t, to_device
from .model import HarmonyModel
from .model.autoencoders import fit_latent_norm
from .tokenizers import caption_tokenizer, speech_tokenizer

log = logging.getLogger(__name__)


PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    size: str = "tiny"
    clips: int = 32
    seconds: float = 2.0
    kinds: tuple = ("ambient",)
    ae_steps: int = 200
    steps: int = 200
    batch: int = 4
    lr: float = 1e-3
    ae_lr: float = 2e-3
    ae_frames: int = 0  # video AE trained on random crops of this many frames (0: whole clips); same function
                        # when video_t_stride divides it, 16 -> 4 frames makes a step ~4x cheaper on video
    stage_fractions: tuple = (0.15, 0.15, 0.7)  # audio, timbre, joint
    use_cts: bool = True
    cts_frac: float = 1.0  # share of the batch each CTS driven task takes (1.0: all clips, 3B rows a step)
    p_drop_cond: float = 0.1  # all texts dropped together, else each on its own, at this rate (for text CFG)
    p_no_ref: float = 0.3
    ref_seconds: tuple = (0.5, 1.0)
    seed: int = 0
    ckpt_every: int = 0  # 0: only at the end
    keep_every: int = 0  # also keep a copy of the checkpoint every N steps in OUT_<step> (0: none)
    stop_after: int = 0  # end this run after this step (the LR schedule still spans `steps`; 0: run to the end)
    ema_decay: float = 0.999  # EMA of the trained weights (what export uses); 0: none
    warmup: int | None = None  # linear LR warm-up steps, then cosine decay to lr_min_frac * lr at `steps`
                               # (None: 100, or a tenth of `steps` when that is fewer)
    lr_min_frac: float = 0.1
    precision: str = "fp32"  # "bf16": the denoiser stage under bf16 autocast (weights, optimizer, losses fp32)
    data: str | None = None  # a folder of your own clips (train.data.folder); None: the procedural clips
    fit: str = "stretch"  # how --data frames meet the model's size: "stretch", or "crop" (aspect kept, center)
    init_from: str | None = None  # fine-tuning: a checkpoint whose weights (EMA), autoencoders, tokenizers start
                                  # this run (step 0, fresh optimizer and schedule)
    overrides: dict = field(default_factory=dict)  # HarmonyConfig fields

    @property
    def last_step(self) -> int:
        """The step this run ends at: `steps`, or `stop_after` when set and earlier."""
        return min(self.steps, self.stop_after) if self.stop_after else self.steps

    def check(self) -> "TrainConfig":
        """Self, or a ValueError naming the first setting no run can use (a damaged checkpoint's stored ones too)."""
        from .data.synth import KINDS

        for k, lo in (("clips", 1), ("batch", 1), ("ae_steps", 0), ("ae_frames", 0), ("steps", 0), ("seed", 0),
                      ("ckpt_every", 0), ("keep_every", 0), ("stop_after", 0)):
            v = getattr(self, k)
            if type(v) is not int or v < lo:
                raise ValueError(f"{k} is {v!r:.40}, must be an integer >= {lo}")
        if self.warmup is not None and (type(self.warmup) is not int or self.warmup < 0):
            raise ValueError(f"warmup is {self.warmup!r:.40}, must be an integer >= 0")
        for k, lo, hi, lo_open, hi_open in (
            ("seconds", 0, math.inf, True, True), ("lr", 0, math.inf, True, True), ("ae_lr", 0, math.inf, True, True),
            ("ema_decay", 0, 1, False, True), ("cts_frac", 0, 1, True, False), ("p_drop_cond", 0, 1, False, False),
            ("p_no_ref", 0, 1, False, False), ("lr_min_frac", 0, 1, False, False),
        ):
            v = getattr(self, k)
            if not within(v, lo, hi, lo_open, hi_open):
                raise ValueError(f"{k} is {v!r:.40}, out of range")
        if not (isinstance(self.kinds, tuple) and self.kinds and all(k in KINDS for k in self.kinds)):
            raise ValueError(f"kinds is {self.kinds!r:.60}, must be a list of {', '.join(KINDS)}")
        f = self.stage_fractions
        if not (isinstance(f, tuple) and len(f) == 3 and all(within(x, 0) for x in f)
                and abs(sum(f) - 1) < 1e-6):
            raise ValueError(f"stage_fractions is {f!r:.60}, must be three fractions summing to 1")
        r = self.ref_seconds
        if not (isinstance(r, tuple) and len(r) == 2 and within(r[0], 0, lo_open=True) and within(r[1], r[0])):
            raise ValueError(f"ref_seconds is {r!r:.60}, must be two lengths 0 < a <= b")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision is {self.precision!r:.40}, must be one of {', '.join(PRECISIONS)}")
        for k in ("data", "init_from"):
            v = getattr(self, k)
            if not (v is None or (isinstance(v, str) and v)):
                raise ValueError(f"{k} is {v!r:.60}, must be a folder")
        if type(self.use_cts) is not bool or not isinstance(self.size, str) or not isinstance(self.overrides, dict):
            raise ValueError("use_cts, size or overrides is of the wrong type")
        return self

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else max(1, min(100, self.steps // 10))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a checkpoint's state["train_config"] (JSON: lists back to tuples); unknown keys are dropped."""
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in cls.__dataclass_fields__}
        dropped = sorted(set(d) - set(known))
        if dropped:
            log.warning("train_config: ignoring settings this version does not have: %s", dropped)
        return cls(**known)


# ----------------------------------------------------------------------------- data


@dataclass
class ClipLatents:
    """One training clip in latent space, with its text."""

    z_v: torch.Tensor  # [C_v, F, H, W]
    z_a: torch.Tensor  # [S, T, C_a]
    null_v: torch.Tensor  # [C_v, F, H, W] static video (first frame repeated)
    video_caption: str
    audio_caption: str
    transcript: str
    speaker: str | None
    z_mix: torch.Tensor  # [T, C_a] the mix encoded (Unison; Harmony: z_a[0]), as a reference is
    grey_v: torch.Tensor  # [C_v, F, H, W] a mid-grey still: the static anchor of T2AV at runtime


def make_clips(tc: TrainConfig, cfg: HarmonyConfig):
    """The run's clips at the model's geometry: the folder `tc.data` (train.data.folder) or procedural ones
    (train.data.synth)."""
    if tc.data:
        from .data.folder import load_clips

        return load_clips(tc.data, cfg.height, cfg.width, cfg.fps, cfg.sample_rate, tc.seconds, cfg.audio_streams,
                          tc.fit)
    from .data.synth import SynthConfig, make_dataset

    sc = SynthConfig(height=cfg.height, width=cfg.width, fps=cfg.fps, sample_rate=cfg.sample_rate, seconds=tc.seconds)
    return make_dataset(tc.clips, tc.seed, sc, kinds=tuple(tc.kinds))


def build_tokenizers(cfg: HarmonyConfig, data: str | None = None):
    """(caption, transcript) tokenizers: the vocabulary of the folder `data`'s captions and transcripts, or of
    the procedural clips; ValueError when it exceeds the model's (text_vocab, speech_vocab)."""
    if data:
        from .data.folder import read_index, vocabulary

        words, chars = vocabulary(read_index(data, cfg.audio_streams))
    else:
        from .data.synth import caption_vocabulary, transcript_charset

        words, chars = caption_vocabulary(), transcript_charset()
    cap = caption_tokenizer(list(words) + list(",.;:!?'-"))
    sp = speech_tokenizer(chars + " ,.!?'-")
    sizes = (("caption tokens", cap.get_vocab_size(), "text_vocab", cfg.text_vocab),
             ("transcript characters", sp.get_vocab_size(), "speech_vocab", cfg.speech_vocab))
    over = [(what, n, key, limit) for what, n, key, limit in sizes if n > limit]
    if over:
        raise ValueError("the data needs more tokens than the model holds ("
                         + "; ".join(f"{what} {n} > {key} {limit}" for what, n, key, limit in over)
                         + "): raise it with " + " ".join(f"--set {key}=N" for _, _, key, _ in over))
    return cap, sp


def run_tokenizers(tc: TrainConfig, cfg: HarmonyConfig, resume: str | Path | None = None):
    """The tokenizers a run trains with: those of the checkpoint it resumes or starts from (the ids its weights
    learned; words of `tc.data` they lack are named in a warning and train as [UNK]), else built."""
    from tokenizers import Tokenizer

    src = resume or tc.init_from
    files = [Path(src) / f for f in TOKENIZER_FILES] if src else []
    kept = bool(files) and all(f.is_file() for f in files)
    toks = tuple(Tokenizer.from_file(str(f)) for f in files) if kept else build_tokenizers(cfg, tc.data)
    if tc.data:
        from .data.folder import read_index, vocabulary

        entries = read_index(tc.data, cfg.audio_streams)
        if kept:
            for tok, items, what in zip(toks, vocabulary(entries), ("caption words", "transcript characters")):
                missing = sorted(set(items) - set(tok.get_vocab()))
                if missing:
                    log.warning("%d %s of %s are not in %s's tokenizer (they train as [UNK]): %s", len(missing),
                                what, tc.data, src, " ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
        _warn_cut_texts(entries, toks, cfg)
    return toks


def _warn_cut_texts(entries, toks, cfg: HarmonyConfig) -> None:
    """Name the clips whose captions / transcript have more tokens than the model reads (max_text_tokens,
    max_speech_chars, less the tokenizer's [BOS]): training cuts them there without a word, and `harmony-rt
    generate` refuses such a text. Counted as the runtime counts them (harmony_rt.text.special_tokens)."""
    cap, sp = toks
    for what, tok, limit, flag, texts in (
        ("caption", cap, cfg.max_text_tokens, "max_text_tokens", lambda e: (e.caption, e.audio_caption)),
        ("transcript", sp, cfg.max_speech_chars, "max_speech_chars", lambda e: (e.transcript,)),
    ):
        special = special_tokens(tok)
        room = limit - special
        cut = [f"{e.where} ({n} tokens)" for e in entries
               for n in dict.fromkeys(len(x.ids) - special for x in tok.encode_batch(list(texts(e)))) if n > room]
        if cut:
            log.warning("%d %s(s) have more tokens than the model reads (%d: its %s %d less [BOS]) and train cut to "
                        "it (the runtime refuses them; a new run may --set %s=N): %s", len(cut), what, room, flag,
                        limit, flag, ", ".join(cut[:5]) + (" ..." if len(cut) > 5 else ""))


def _frames_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [3, T, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).float().permute(3, 0, 1, 2) / 127.5 - 1.0


def _clip_arrays(clip, cfg: HarmonyConfig):
    """Frames [3, FP, H, W] and waveforms [S, W] cropped to whole latent frames."""
    fp = (clip.frames.shape[0] // cfg.video_t_stride) * cfg.video_t_stride
    f = fp // cfg.video_t_stride
    w = cfg.geometry().audio_frames_for(f) * cfg.audio_hop
    streams = [clip.audio] if cfg.audio_streams == 1 else [clip.speech, clip.sfx]
    wav = np.stack([np.pad(s, (0, max(0, w - len(s))))[:w] for s in streams]).astype(np.float32)
    return _frames_tensor(clip.frames[:fp]), torch.from_numpy(wav)


# ----------------------------------------------------------------------------- autoencoders


def stft_terms(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-resolution log-magnitude STFT distance of waveforms [B, W], per waveform: [B]."""
    loss = x.new_zeros(x.shape[0])
    for n_fft in (256, 512, 1024):
        win = torch.hann_window(n_fft, device=x.device)
        X = torch.stft(x, n_fft, n_fft // 4, window=win, return_complex=True).abs()
        Y = torch.stft(y, n_fft, n_fft // 4, window=win, return_complex=True).abs()
        loss = loss + (torch.log(X + 1e-5) - torch.log(Y + 1e-5)).abs().mean((1, 2)) + (X - Y).abs().mean((1, 2))
    return loss


def stft_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-resolution log-magnitude STFT distance of waveforms [B, W] (the mean of stft_terms)."""
    return stft_terms(x, y).mean()


# The decoders end in tanh. Where a target sits near -1 or 1 (dark footage, a clipped sound) AdamW drove the
# pre-activations far past tanh's live range within tens of steps (-740 on a folder of dark clips) and they never
# came back: tanh's gradient there is ~0 while Adam's normalised step is not, so the video decoder wrote black
# frames for every input. A penalty on pre-activations beyond LIVE_RANGE keeps them where tanh still learns;
# tanh(4) = 0.9993, so every 8-bit level (255 included) stays reachable, and it is 0 inside the range.
LIVE_RANGE = 4.0


def _out_of_range(pre: torch.Tensor) -> torch.Tensor:
    """Mean squared excess of decoder pre-activations over LIVE_RANGE (0 inside it)."""
    return F.relu(pre.abs() - LIVE_RANGE).square().mean()


def _flat_decoder_warning(model: HarmonyModel, frames: torch.Tensor, wavs: torch.Tensor) -> None:
    """Warn when an autoencoder's reconstructions of the first clips hardly vary while the clips do: a collapsed
    decoder (every generated video black, or silence) should not pass unnoticed into the denoiser stage."""
    with torch.no_grad():
        pairs = (("video", frames[:4], lambda x: model.video_ae.decode(model.video_ae.encode(x))),
                 ("audio", wavs[:4], lambda x: model.audio_ae.decode(model.audio_ae.encode(x))))
        for name, x, rec in pairs:
            got, want = float(rec(x).std()), float(x.std())
            if want > 1e-3 and got < 0.01 * want:  # a barely trained audio decoder sits at ~3 % after 40 steps
                log.warning("the %s autoencoder's reconstructions are flat (std %.3g against %.3g in its clips): its "
                            "decoder has collapsed or barely trained; more --ae-steps, or a lower --ae-lr", name, got,
                            want)
        # raw latent spread against the sound's: ~0.1 where the encoder collapsed (the check above missed half
        # such runs), 3-170 where it works (measured on sparse own clips and the procedural ones)
        spread = float(model.audio_ae.scale.median()) / max(float(wavs.std()), 1e-6)
        if spread < 0.3:
            log.warning("the audio autoencoder's latents hardly vary (median spread %.3g of the sound's): its "
                        "encoder has collapsed, and the model will make the same sound for every input; more "
                        "--ae-steps, or louder clips", spread)


AUDIO_CROP_TRIES = 4  # candidate crops per batch item; the loudest is trained on
CROP_PEAKS = (0.25, 0.95)  # each sounding crop is scaled to a peak drawn from this range (quiet clips taught too)
SILENT_PEAK = 1e-3  # a crop whose peak is below this counts as silence


def _audio_crops(wavs: torch.Tensor, n: int, seg: int, hop: int, gen: torch.Generator) -> torch.Tensor:
    """n crops [n, seg] of the waveforms wavs [C, W] for the audio autoencoder: each of a random clip, at its own
    hop-aligned offset, the loudest of AUDIO_CROP_TRIES random ones, its peak scaled into CROP_PEAKS. With one
    offset for the whole batch, no preference and the clips' own levels, a folder of sparse, quiet sound
    (speech filling a third of each clip at RMS 0.04, a few clicks: ~75 % of crops silent) gave mostly silent
    batches, and the autoencoder learned to output silence whatever it was given (its latents constant,
    every generated clip silent: 6 of 6 runs on such a folder, before these crops and audio_ae_loss).
    Drawn on the CPU generator, indexed on the clips' device without a host sync."""
    dev, tries = wavs.device, AUDIO_CROP_TRIES
    clips = to_device(torch.randint(len(wavs), (n, 1, 1), generator=gen), dev)  # [n, 1, 1]
    starts = torch.randint(max(1, wavs.shape[1] - seg) // hop, (n, tries, 1), generator=gen) * hop
    idx = to_device(starts, dev) + torch.arange(seg, device=dev)  # [n, tries, seg]
    cands = wavs[clips.expand(n, tries, seg), idx]  # [n, tries, seg]
    best = cands.square().mean(2).argmax(1)  # [n]
    w = cands[torch.arange(n, device=dev), best]  # [n, seg]
    peak = w.abs().amax(1, keepdim=True)  # [n, 1]
    target = to_device(torch.empty(n, 1).uniform_(*CROP_PEAKS, generator=gen), dev)
    return torch.where(peak > SILENT_PEAK, w * target / peak.clamp_min(SILENT_PEAK), w)


def audio_ae_loss(rec: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """L1 on every crop [B, seg] + 0.1 x the STFT distance on the crops that sound. On a silent crop the
    log-magnitude term measures the output against the 1e-5 floor: any output costs much, exact silence nothing,
    and with a third of the crops silent it drove the whole autoencoder to output silence (L1 still teaches
    silence -> silence)."""
    loud = (w.abs().amax(1) > SILENT_PEAK).to(rec.dtype)  # [B]; a mask, not an index: no host sync
    spectral = (stft_terms(rec, w) * loud).sum() / loud.sum().clamp_min(1)
    return (rec - w).abs().mean() + 0.1 * spectral


def train_autoencoders(model: HarmonyModel, clips, tc: TrainConfig, gen: torch.Generator,
                       should_stop: Callable[[], bool] | None = None) -> dict:
    cfg, dev = model.cfg, _device(model)
    arrays = [_clip_arrays(c, cfg) for c in clips]
    frames = torch.stack([a[0] for a in arrays]).to(dev)  # [C, 3, FP, H, W]
    wavs = torch.cat([a[1] for a in arrays]).to(dev)  # [C*S, W]
    params = list(model.video_ae.parameters()) + list(model.audio_ae.parameters())
    opt = torch.optim.AdamW(params, lr=tc.ae_lr)
    seg = cfg.audio_hop * 16
    logs = {}
    for step in range(tc.ae_steps):
        idx = to_device(torch.randint(len(frames), (min(tc.batch, len(frames)),), generator=gen), dev)
        fr = frames[idx]  # [B, 3, FP, H, W]
        if tc.ae_frames and tc.ae_frames < fr.shape[2]:
            n = max(cfg.video_t_stride, tc.ae_frames // cfg.video_t_stride * cfg.video_t_stride)
            f0 = int(torch.randint((fr.shape[2] - n) // cfg.video_t_stride + 1, (1,),
                                   generator=gen)) * cfg.video_t_stride
            fr = fr[:, :, f0 : f0 + n]
        rec_v = model.video_ae.decoder(model.video_ae.encoder(fr))  # [B, 3, FP, H, W] before the tanh
        lv = F.mse_loss(torch.tanh(rec_v), fr)
        w = _audio_crops(wavs, min(tc.batch, len(wavs)), seg, cfg.audio_hop, gen)  # [B, seg]
        pre_a = model.audio_ae.decoder(model.audio_ae.encoder(w[:, None]))[:, 0]  # [B, seg] before the tanh
        rec_a = torch.tanh(pre_a)
        la = audio_ae_loss(rec_a, w)
        opt.zero_grad()
        (lv + la + _out_of_range(rec_v) + _out_of_range(pre_a)).backward()
        _sync_grads(params)
        _check_finite(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]), step,
                      "autoencoders", lv + la)
        opt.step()
        logs = {"ae_video": lv.detach(), "ae_audio": la.detach()}
        if step % 50 == 0 or step == tc.ae_steps - 1:
            log.info("ae step %d %s", step, _floats(logs))
        if _agreed_stop(should_stop):
            raise Interrupted(f"stopped at autoencoder step {step + 1} of {tc.ae_steps}")
    with torch.no_grad():
        fit_latent_norm(model.video_ae, model.video_ae.encoder(frames), channel_dim=1)
        fit_latent_norm(model.audio_ae, model.audio_ae.encoder(wavs[:, None]).transpose(1, 2), channel_dim=2)
    _flat_decoder_warning(model, frames, wavs)
    if torch.distributed.is_initialized():  # every rank uses rank 0's latent normalisation
        for buf in (model.video_ae.shift, model.video_ae.scale, model.audio_ae.shift, model.audio_ae.scale):
            torch.distributed.broadcast(buf, 0)
    return _floats(logs)


@torch.no_grad()
def encode_clips(model: HarmonyModel, clips) -> list[ClipLatents]:
    """Latents of the clips, on the model's device (kept there for the whole run)."""
    cfg, dev = model.cfg, _device(model)
    out, grey = [], {}  # grey: shape -> video_encoder(mid-grey frames), the static anchor where no frame is given
    for c in clips:
        fr, wav = (x.to(dev) for x in _clip_arrays(c, cfg))
        if fr.shape not in grey:  # pixel value 127, as harmony_rt's pipeline makes it for T2AV / A2V
            grey[fr.shape] = model.video_ae.encode(torch.full((1, *fr.shape), 127 / 127.5 - 1.0, device=dev))[0]
        z_v = model.video_ae.encode(fr[None])[0]
        static = fr[:, :1].expand_as(fr)
        null_v = model.video_ae.encode(static[None])[0]
        z_a = model.audio_ae.encode(wav)  # [S, T, C_a]
        # the runtime encodes a reference voice as one waveform: for Unison the mix, not the stems' latents summed
        z_mix = z_a[0] if len(wav) == 1 else model.audio_ae.encode(wav.sum(0, keepdim=True))[0]
        out.append(ClipLatents(z_v, z_a, null_v, c.video_caption, c.audio_caption, c.transcript, c.speaker, z_mix,
                               grey[fr.shape]))
    return out


# ----------------------------------------------------------------------------- denoiser


def _tokens(tok, texts, max_len, device=torch.device("cpu")):
    """Token ids [N, L] (long) and mask [N, L], padded as the runtime pads them, cut to max_len."""
    ids, mask = pad_ids([e.ids for e in tok.encode_batch(texts)], max_len)
    return to_device(torch.from_numpy(ids), device), to_device(torch.from_numpy(mask), device)


_SILENCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # audio autoencoder -> {(frames, device): latent}
GREY_STILL = 0.5  # share of the static anchors that are a mid-grey still rather than the clip's first frame


@torch.no_grad()
def _silence_latent(model, frames: int) -> torch.Tensor:
    """audio_encoder(silence) [1, T, C_a]: the null audio of the SyncCFG anchor (cached per length). In fp32
    under bf16 autocast too, as the latents of the clips are encoded (the autoencoders run in fp32)."""
    dev = _device(model)
    cache = _SILENCE.setdefault(model.audio_ae, {})  # per autoencoder object (an id() can be reused)
    key = (frames, dev)
    if key not in cache:
        with torch.autocast(dev.type, enabled=False) if dev.type in ("cpu", "cuda") else contextlib.nullcontext():
            cache[key] = model.audio_ae.encode(torch.zeros(1, frames * model.cfg.audio_hop, device=dev))
    return cache[key]


def drop_texts(texts: tuple[str, ...], p: float, gen) -> tuple[str, ...]:
    """A clip's (video caption, audio caption, transcript) with conditions dropped for classifier-free guidance:
    all together with probability p (the runtime's text-CFG negative leaves out all three), else each on its
    own with probability p."""
    if torch.rand(1, generator=gen).item() < p:
        return ("",) * len(texts)
    return tuple("" if torch.rand(1, generator=gen).item() < p else t for t in texts)


def make_batch(model, lat: list[ClipLatents], idx, toks, tc: TrainConfig, stage: str, gen) -> CTSBatch:
    """Stack clips, tokenize and encode their texts (encoders train with the denoiser), pick references."""
    cfg, dev = model.cfg, _device(model)
    cap, sp = toks
    items = [lat[i] for i in idx]
    texts = [drop_texts((it.video_caption, it.audio_caption, it.transcript), tc.p_drop_cond, gen) for it in items]
    vcap, acap, trans = (list(x) for x in zip(*texts))
    t_ids, t_mask = _tokens(cap, vcap, cfg.max_text_tokens, dev)
    a_ids, a_mask = _tokens(cap, acap, cfg.max_text_tokens, dev)
    s_ids, s_mask = _tokens(sp, trans, cfg.max_speech_chars, dev)
    # reference: a 1-2 s crop of the mix (stage 1, 3: same clip; stage 2: another clip of the same speaker)
    lat_per_s = cfg.sample_rate / cfg.audio_hop
    R = int(lat_per_s * (tc.ref_seconds[0]
                         + (tc.ref_seconds[1] - tc.ref_seconds[0]) * torch.rand(1, generator=gen).item()))
    refs, rmask = [], []
    for it in items:
        src = it
        if stage == "timbre" and it.speaker is not None:
            same = [o for o in lat if o.speaker == it.speaker and o is not it]
            if same:
                src = same[int(torch.randint(len(same), (1,), generator=gen))]
        za = src.z_mix  # [T, C_a] a voice sample of the mix
        r = min(R, za.shape[0])
        off = int(torch.randint(za.shape[0] - r + 1, (1,), generator=gen))
        refs.append(F.pad(za[off : off + r], (0, 0, 0, R - r)))
        keep = torch.rand(1, generator=gen).item() >= tc.p_no_ref
        rmask.append(torch.cat([torch.full((r,), float(keep)), torch.zeros(R - r)]))
    cond = dict(
        text_emb=model.text_encoder(t_ids, t_mask), text_mask=t_mask,
        audio_text_emb=model.text_encoder(a_ids, a_mask), audio_text_mask=a_mask,
        speech_emb=model.speech_encoder(s_ids, s_mask), speech_mask=s_mask,
        ref_latent=torch.stack(refs), ref_mask=to_device(torch.stack(rmask), dev),
    )
    z_a = torch.stack([it.z_a for it in items])
    null_a = _silence_latent(model, z_a.shape[2])[None].expand_as(z_a)
    # the static anchor: the clip's first frame held (I2AV, V2A at runtime) or a mid-grey still (T2AV, A2V)
    null_v = [it.grey_v if torch.rand(1, generator=gen).item() < GREY_STILL else it.null_v for it in items]
    return CTSBatch(torch.stack([it.z_v for it in items]), z_a, cond, torch.stack(null_v), null_a)


def audio_only_loss(denoiser, batch: CTSBatch, cfg: HarmonyConfig, gen) -> tuple[torch.Tensor, dict]:
    """Stages 1-2: audio flow matching with the video fed as pure noise (t_v = 1): no video signal."""
    B, dev = batch.z_a.shape[0], batch.z_a.device
    t_a = to_device(sample_t(B, cfg.shift, gen), dev)
    eps_a = noise_like(batch.z_a, gen)
    zt_v = noise_like(batch.z_v, gen)
    pv, pa = denoiser(zt_v, noise_to(batch.z_a, t_a, eps_a), torch.ones(B, device=dev), t_a, **batch.cond)
    loss = ((pa.float() - (eps_a - batch.z_a)) ** 2).mean()
    return loss, {"audio": loss.detach()}


def step_loss(model, batch: CTSBatch, tc: TrainConfig, step: int, gen) -> tuple[torch.Tensor, dict]:
    """The loss of a denoiser step at `step`: audio-only (stages 1-2), CTS (3), Unison's forcing (+ CTS)."""
    stage, cfg = stage_of(step, tc), model.cfg
    if stage == "joint" and cfg.audio_streams == 2:  # Unison: cross-modal forcing on the stems
        a, b, c = tc.stage_fractions
        progress = (step / max(1, tc.steps) - a - b) / max(c, 1e-9)
        return forcing_loss(model.denoiser, batch, cfg, progress, gen, use_cts=tc.use_cts, driven_frac=tc.cts_frac)
    if stage == "joint":
        return cts_loss(model.denoiser, batch, cfg, use_cts=tc.use_cts, generator=gen, driven_frac=tc.cts_frac)
    return audio_only_loss(model.denoiser, batch, cfg, gen)


def stage_of(step: int, tc: TrainConfig) -> str:
    a, b, _ = tc.stage_fractions
    x = step / max(1, tc.steps)
    return "audio" if x < a else "timbre" if x < a + b else "joint"


SYNC_BUCKET = 2**24  # gradient elements per all-reduce (64 MB of fp32)


def _sync_grads(params) -> None:
    """Average gradients over processes (torchrun): every trained module -- autoencoders, encoders,
    denoiser -- stays identical on all ranks without wrapping each in DDP. Gradients travel in buckets of up
    to SYNC_BUCKET elements (one all-reduce per parameter is thousands of calls a step on a large model)."""
    if not torch.distributed.is_initialized():
        return
    world = torch.distributed.get_world_size()
    bucket: list[torch.Tensor] = []
    size = 0  # elements in `bucket`

    def flush():
        nonlocal size
        flat = torch.cat([g.reshape(-1) for g in bucket])
        torch.distributed.all_reduce(flat)
        flat /= world
        for g, part in zip(bucket, flat.split([g.numel() for g in bucket])):
            g.copy_(part.view_as(g))
        bucket.clear()
        size = 0

    for g in (p.grad for p in params if p.grad is not None):
        if bucket and (g.dtype != bucket[0].dtype or g.device != bucket[0].device or size + g.numel() > SYNC_BUCKET):
            flush()
        bucket.append(g)
        size += g.numel()
    if bucket:
        flush()


def lr_at(step: int, tc: TrainConfig) -> float:
    """Learning rate of a denoiser step: linear warm-up, then cosine decay to lr_min_frac * lr."""
    warmup = tc.warmup_steps
    if step < warmup:
        return tc.lr * (step + 1) / warmup
    x = min(1.0, (step - warmup) / max(1, tc.steps - warmup))
    return tc.lr * (tc.lr_min_frac + (1 - tc.lr_min_frac) * 0.5 * (1 + math.cos(math.pi * x)))


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _floats(logs: dict) -> dict:
    """Logged losses (detached tensors, possibly on a GPU) as numbers: the one device sync of a logged step."""
    return {k: round(float(v), 6) for k, v in logs.items()}


def resolve_device(name: str | None) -> torch.device:
    """"auto" / None: the local CUDA GPU when there is one (under torchrun the rank's LOCAL_RANK), else the CPU;
    "cuda" under torchrun: LOCAL_RANK's GPU. A device this machine lacks is a ValueError naming it."""
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{name!r} is not a device (cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: no CUDA GPU here (torch {torch.__version__}"
                             f"{', built without CUDA' if torch.version.cuda is None else ''})")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would take the same GPU
            raise ValueError(f"{name}: under torchrun give cuda, and each process takes its LOCAL_RANK GPU")
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type != "cpu":
        raise ValueError(f"{name}: training runs on cpu or cuda, not {dev.type}")
    return dev


class EMA:
    """Exponential moving average of named parameters; decay ramps up as (1 + n) / (10 + n) early on."""

    def __init__(self, named: dict[str, torch.Tensor], decay: float, state: dict[str, torch.Tensor] | None = None):
        self.named, self.decay = named, decay
        self.avg = {k: (state[k].to(p.device, copy=True) if state and k in state else p.detach().clone())
                    for k, p in named.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.avg.values()), [p.detach() for p in self.named.values()], 1 - d)


def _agreed_stop(should_stop: Callable[[], bool] | None) -> bool:
    """should_stop(), agreed over all processes under torchrun (any rank asked: all stop at this step)."""
    if should_stop is None:
        return False
    stop = bool(should_stop())
    if torch.distributed.is_initialized():
        flag = torch.tensor([float(stop)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop = bool(flag.item())
    return stop


def _dist(dev: torch.device):
    """(rank, world); under torchrun the process group: gloo, and NCCL for tensors on CUDA GPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo")
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Interrupted(Exception):
    """`should_stop` asked to stop before the denoiser's training began: nothing was saved."""


class Diverged(Exception):
    """A step's gradient was not finite (a NaN / Inf loss): training stopped before it reached the weights."""

    def __init__(self, step: int, stage: str, loss: float):
        super().__init__(f"step {step} ({stage}) gave a non-finite gradient (loss {loss:.4g})")
        self.stage = stage


def _check_finite(norm: torch.Tensor, step: int, stage: str, loss: torch.Tensor) -> None:
    """Raise Diverged when the gradient norm of a step is NaN / Inf. Gradients are all-reduced before this, so
    under torchrun every rank sees the same norm and stops at the same step."""
    if not torch.isfinite(norm):
        raise Diverged(step, stage, loss.item())


def snapshot_path(out: str | Path, step: int) -> Path:
    """Where --keep-every keeps the checkpoint of `step`: OUT_<step> beside OUT."""
    out = Path(os.path.abspath(out))
    return out.parent / f"{out.name}_{step}"


def _rng_state(gen: torch.Generator) -> str:
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode("ascii")


def _restore_rng(gen: torch.Generator, state: dict, world: int) -> None:
    """A resumed single-process run continues its random stream where it stopped (bit-exact resume); under
    torchrun, where only rank 0's stream is saved, each rank reseeds from (seed, rank, step) instead."""
    saved = state.get("rng")
    if world == 1 and isinstance(saved, str):
        try:
            gen.set_state(torch.from_numpy(np.frombuffer(base64.b64decode(saved), dtype=np.uint8).copy()))
            return
        except (ValueError, RuntimeError):
            log.warning("the checkpoint's random state is damaged: reseeding")
    gen.manual_seed(gen.initial_seed() + 7919 * state.get("step", 0))


def train(tc: TrainConfig, out: str | Path, resume: str | Path | None = None, clips=None,
          should_stop: Callable[[], bool] | None = None, device: str | torch.device | None = "cpu") -> Path:
    """Train (or resume) and write a checkpoint folder to `out`; returns its path.

    should_stop: polled after every step; once it returns True the run saves its checkpoint at that step (as
    at the end) and returns, resumable with `resume=out`. During the autoencoder stage it raises Interrupted.
    device: where to train (`resolve_device`: "cpu", "cuda", "cuda:N", "auto").
    """
    dev = resolve_device(str(device) if device is not None else None)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # the current device of kernels, NCCL and autocast (not GPU 0)
    rank, world = _dist(dev)
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    gen = torch.Generator().manual_seed(tc.seed + 1000 * rank)  # each rank its own batches and noise
    state = {"ae_done": False, "step": 0, "train_config": asdict(tc)}
    if resume:
        model, opt_sd, state = load_checkpoint(resume, ema=False)
        state.setdefault("step", 0)
        _restore_rng(gen, state, world)
        if model.cfg != get_config(tc.size, **tc.overrides):
            log.warning("resuming %s: the model's config is the checkpoint's, not size %r", resume, tc.size)
        log.info("resumed from %s at step %d", resume, state["step"])
    elif tc.init_from:  # fine-tuning: its weights (EMA where kept) and autoencoders; a new run otherwise
        model, _, _ = load_checkpoint(tc.init_from, optimizer=False)
        state["ae_done"] = True  # the latent space its denoiser knows
        opt_sd = None
        log.info("starting from the weights of %s (its autoencoders and tokenizers kept)", tc.init_from)
    else:
        model = HarmonyModel(get_config(tc.size, **tc.overrides))
        opt_sd = None
    model.to(dev)
    cfg = model.cfg
    state["train_config"] = asdict(tc)
    toks = run_tokenizers(tc, cfg, resume)
    tok_files = dict(zip(TOKENIZER_FILES, (t.to_str() for t in toks)))
    if clips is None and tc.data:  # a resumed run reads its folder again: say when it is not what it was
        from .data.folder import fingerprint, read_index

        digest = fingerprint(tc.data, read_index(tc.data, cfg.audio_streams))
        if resume and state.get("data_fingerprint") not in (None, digest):
            log.warning("%s is not what %s trained on so far (clips.jsonl or a file it names changed): the run goes "
                        "on with what it holds now", tc.data, resume)
        state["data_fingerprint"] = digest
    clips = clips if clips is not None else make_clips(tc, cfg)
    clips = clips[rank::world]
    log.info("training on %s in %s", dev, tc.precision)  # after the clips are read: their problems come first
    t0 = time.time()
    if not state.get("ae_done"):
        model.train()
        state["ae_logs"] = train_autoencoders(model, clips, tc, gen, should_stop)
        state["ae_done"] = True
        log.info("autoencoders trained in %.0f s", time.time() - t0)
    for p in list(model.video_ae.parameters()) + list(model.audio_ae.parameters()):
        p.requires_grad_(False)
    lat = encode_clips(model, clips)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    trainable = list(named.values())
    opt = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=0.0)
    ema = EMA(named, tc.ema_decay, load_ema(resume, named) if resume else None) if tc.ema_decay > 0 else None
    if opt_sd is not None and state.get("phase") == "denoiser":
        opt.load_state_dict(opt_sd)  # its moments move to the parameters' device
    state["phase"] = "denoiser"
    model.train()
    for step in range(state["step"], tc.last_step):
        stage = stage_of(step, tc)
        idx = torch.randint(len(lat), (min(tc.batch, len(lat)),), generator=gen).tolist()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16"):
            loss, logs = step_loss(model, make_batch(model, lat, idx, toks, tc, stage, gen), tc, step, gen)
        opt.zero_grad()
        loss.backward()
        _sync_grads(trainable)
        _check_finite(torch.nn.utils.clip_grad_norm_(trainable, 1.0), step, stage, loss)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc)
        opt.step()
        if ema is not None:
            ema.update(step)
        state["step"] = step + 1
        state["rng"] = _rng_state(gen)
        if step % 25 == 0 or step == tc.steps - 1:
            log.info("step %d [%s] loss %.4f %s (%.0f s)", step, stage, loss.item(), _floats(logs), time.time() - t0)
        if rank == 0 and tc.ckpt_every and (step + 1) % tc.ckpt_every == 0 and step + 1 < tc.steps:
            save_checkpoint(out, model, opt, state, tok_files, ema.avg if ema else None)
        if rank == 0 and tc.keep_every and (step + 1) % tc.keep_every == 0:
            save_checkpoint(snapshot_path(out, step + 1), model, opt, state, tok_files, ema.avg if ema else None)
        if _agreed_stop(should_stop):
            log.info("stopping at step %d of %d", step + 1, tc.steps)
            break
    state["train_seconds"] = state.get("train_seconds", 0) + time.time() - t0
    if world > 1:  # every rank must end with the same weights (gradients all-reduced each step)
        digest = sum(float(p.detach().double().sum()) for p in model.parameters())
        log.info("rank %d of %d: weight checksum %.10e", rank, world, digest)
    if rank == 0:
        save_checkpoint(out, model, opt, state, tok_files, ema.avg if ema else None)
    return Path(out)


def main(argv=None):
    from .cli import train_main

    train_main(argv)


if __name__ == "__main__":
    main()
