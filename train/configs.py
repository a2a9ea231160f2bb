"""Size registry of Harmony models (DiT-style): one dataclass, named sizes, from_dict / to_dict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from harmony_rt.bundle import GEOMETRY_RANGES, SAMPLING_RANGES
from harmony_rt.contract import Geometry

# config fields the runtime bounds under the same name in the manifest (geometry or sampling): (lo, hi)
RUNTIME_RANGES = {k: (lo, hi) for k, (_, lo, hi, *_) in {**GEOMETRY_RANGES, **SAMPLING_RANGES}.items()
                  if lo is not None}


def within(v, lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False) -> bool:
    """`v` is a finite real number (not a bool) from `lo` to `hi`, each end excluded when flagged open."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi))


@dataclass
class HarmonyConfig:
    # --- media / latent geometry -------------------------------------------------
    fps: float = 8.0
    height: int = 32
    width: int = 32
    sample_rate: int = 16000
    video_t_stride: int = 2  # pixel frames per latent frame
    video_s_stride: int = 4  # pixels per latent cell
    audio_hop: int = 256  # waveform samples per audio latent frame
    C_v: int = 4
    C_a: int = 8
    audio_streams: int = 1  # 1 = Harmony (mix), 2 = Unison (speech, sfx)
    max_latent_frames: int = 8
    # --- video DiT (Wan2.2-style) -------------------------------------------------
    video_dim: int = 64
    video_heads: int = 2
    video_ffn: int = 128
    patch: tuple = (1, 2, 2)
    # --- audio DiT (MM-DiT-style) -------------------------------------------------
    audio_dim: int = 64
    audio_heads: int = 2
    audio_ffn: int = 128
    layers: int = 2  # joint layers; each has a video block, an audio block and GLDI
    # --- GLDI ------------------------------------------------------------------
    gldi_window: float = 1.0  # +- video latent frames an audio/video token may attend across
    gldi_every: int = 1  # GLDI in every k-th layer
    rope_theta: float = 10000.0
    # --- conditioning encoders ----------------------------------------------------
    text_vocab: int = 512
    text_dim: int = 64
    text_layers: int = 1
    max_text_tokens: int = 32
    speech_vocab: int = 512
    speech_dim: int = 64
    speech_layers: int = 1
    max_speech_chars: int = 64
    # --- autoencoders -------------------------------------------------------------
    vae_video_ch: int = 32
    vae_audio_ch: int = 64
    # --- flow matching / sampling defaults ----------------------------------------------
    shift: float = 5.0
    steps: int = 40
    s_v: float = 3.0
    s_a: float = 2.0
    cfg_scale: float = 5.0
    lambda_v: float = 0.1  # CTS weight of the audio-driven (video loss) task
    lambda_a: float = 0.3  # CTS weight of the video-driven (audio loss) task

    @property
    def video_latent_hw(self) -> tuple[int, int]:
        return self.height // self.video_s_stride, self.width // self.video_s_stride

    def geometry(self) -> Geometry:
        return Geometry(
            fps=self.fps, height=self.height, width=self.width, sample_rate=self.sample_rate,
            C_v=self.C_v, C_a=self.C_a, S=self.audio_streams, video_t_stride=self.video_t_stride,
            video_s_stride=self.video_s_stride, audio_hop=self.audio_hop, text_dim=self.text_dim,
            speech_dim=self.speech_dim, max_text_tokens=self.max_text_tokens,
            max_speech_chars=self.max_speech_chars, max_latent_frames=self.max_latent_frames,
            patch=tuple(self.patch),
        )

    def check(self) -> "HarmonyConfig":
        """Self, or a ValueError naming the first field no model can be built from (before any weights)."""
        non_negative = {"gldi_window", "s_v", "s_a", "cfg_scale", "lambda_v", "lambda_a"}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "patch":
                ok = len(v) == 3 and all(type(x) is int and x >= 1 for x in v)
            else:
                ok = within(v, 0, lo_open=f.name not in non_negative)
            if not ok:
                want = "three integers >= 1" if f.name == "patch" else ">= 0" if f.name in non_negative else "> 0"
                raise ValueError(f"{f.name} is {v!r}, must be finite and {want}")
            if f.name in RUNTIME_RANGES:  # what a bundle's manifest may hold: harmony-rt refuses the rest
                lo, hi = RUNTIME_RANGES[f.name]
                if not lo <= v <= hi:
                    raise ValueError(f"{f.name} is {v!r}; a bundle's manifest takes {lo:g}..{hi:g}")
        if self.patch[0] != 1:  # the denoiser's export traces frames as a free dimension, patched in space only
            raise ValueError(f"patch is {list(self.patch)}: a temporal patch above 1 cannot be exported (use "
                             f"[1, {self.patch[1]}, {self.patch[2]}])")
        if self.audio_streams not in (1, 2):
            raise ValueError(f"audio_streams is {self.audio_streams}, must be 1 (Harmony) or 2 (Unison)")
        for name in ("video_s_stride", "audio_hop"):  # the autoencoders halve / quarter the resolution per layer
            v = getattr(self, name)
            if v & (v - 1):
                raise ValueError(f"{name} is {v}, must be a power of two")
        # GLDI: every video frame and audio frame must reach at least one partner within the window (frame-wise
        # attention with none is a softmax over nothing); positions are in video latent frames
        audio_frame = (self.audio_hop / self.sample_rate) / (self.video_t_stride / self.fps)
        if self.gldi_window < 0.5 * max(1.0, audio_frame):
            raise ValueError(f"gldi_window is {self.gldi_window:g}: at least {0.5 * max(1.0, audio_frame):g} (half a "
                             "latent frame) is needed for every frame to attend across")
        for side in ("video", "audio"):
            dim, heads = getattr(self, f"{side}_dim"), getattr(self, f"{side}_heads")
            least = 6 if side == "video" else 2  # 3-D RoPE: at least one rotated pair per axis
            if dim % heads or (dim // heads) % 2 or dim // heads < least:
                raise ValueError(f"{side}_dim {dim} must split into {side}_heads {heads} heads of an even size "
                                 f">= {least}")
        for name, n in (("height", self.height), ("width", self.width)):
            cell = self.video_s_stride * self.patch[1 if name == "height" else 2]
            if n % cell:
                raise ValueError(f"{name} {n} must be a multiple of video_s_stride x patch ({cell})")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch"] = list(self.patch)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HarmonyConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        kw = dict(d)
        if "patch" in kw:
            kw["patch"] = tuple(kw["patch"])
        return cls(**kw)


SIZES: dict[str, HarmonyConfig] = {
    # Seconds on a CPU: for tests.
    "tiny": HarmonyConfig(),
    # The shipped demo model: trained in 40 minutes on a 2-core CPU (train/recipes/quick.sh). One latent
    # frame per video frame (a temporal stride of 2 merged the frames of a bounce and lost the impact frame)
    # and a small shift: 8x8x16 latents are far fewer positions than the 720p geometry shift 5 was tuned for.
    "demo": HarmonyConfig(
        height=64, width=64, video_t_stride=1, video_s_stride=8, C_v=8, C_a=16, video_dim=96, video_heads=2,
        video_ffn=192, audio_dim=96, audio_heads=2, audio_ffn=192, layers=3, text_dim=64, speech_dim=64,
        max_latent_frames=16, text_layers=2, speech_layers=2, shift=2.0,
    ),
    # ~1 s per guided denoiser step (3 SyncCFG rows, its 4 s default clip) on the idle 2-core dev VM.
    "bench-large": HarmonyConfig(
        height=64, width=64, video_dim=512, video_heads=8, video_ffn=2048, audio_dim=512, audio_heads=8,
        audio_ffn=2048, layers=4, C_v=8, C_a=16, text_dim=256, speech_dim=256, max_latent_frames=16,
    ),
    # The paper's geometry (Wan2.2-TI2V-5B video tower + MMAudio-style audio VAE): config only.
    "harmony-5b": HarmonyConfig(
        fps=24.0, height=704, width=1280, sample_rate=16000, video_t_stride=4, video_s_stride=16,
        audio_hop=512, C_v=48, C_a=20, video_dim=3072, video_heads=24, video_ffn=14336, audio_dim=1536,
        audio_heads=12, audio_ffn=6144, layers=30, text_dim=4096, text_vocab=256384, text_layers=24,
        max_text_tokens=512, speech_vocab=8192, speech_dim=512, speech_layers=4, max_speech_chars=1024,
        max_latent_frames=31, vae_video_ch=256, vae_audio_ch=512,
    ),
}


def get_config(name: str, **overrides) -> HarmonyConfig:
    if name not in SIZES:
        raise KeyError(f"unknown model size {name!r}; known: {sorted(SIZES)}")
    return replace(SIZES[name], **overrides)


def unison(cfg: HarmonyConfig) -> HarmonyConfig:
    """The Unison variant of a size: two audio streams (speech, sfx)."""
    return replace(cfg, audio_streams=2)


__all__ = ["HarmonyConfig", "SIZES", "get_config", "unison"]
