"""The I/O contract of every bundle component: the one definition export, runtime and engines share.

Shapes are tuples of symbolic dimension names (str) or fixed sizes (int). Symbolic names:

    N   batch (guidance branches x samples)      F   video latent frames
    S   audio streams (1 = Harmony, 2 = Unison)  T   audio latent frames
    R   reference audio latent frames            L   video-caption tokens
    LA  audio-caption tokens                     P   transcript characters
    W   waveform samples                         FP  pixel frames

Names written in capitals with a `$` (e.g. "$C_v") are filled in from the model geometry in the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FORMAT_VERSION = 1
# The flow-matching convention the runtime's ODE loop and guidance anchors assume (manifest sampling.time).
TIME_CONVENTION = "t in [0, 1], 1 = noise, z_t = (1 - t) z_0 + t eps, v = eps - z_0"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and (partly symbolic) shape."""

    name: str
    dtype: str  # "float32" | "int64"
    shape: tuple

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))


@dataclass(frozen=True)
class ComponentSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


def _t(name: str, dtype: str, *shape) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(shape))


# $-names are resolved from the geometry (see `resolve`).
_TEMPLATE: dict[str, ComponentSpec] = {
    "text_encoder": ComponentSpec(
        inputs=(_t("text_ids", "int64", "N", "L"), _t("text_mask", "float32", "N", "L")),
        outputs=(_t("text_emb", "float32", "N", "L", "$text_dim"),),
    ),
    "speech_encoder": ComponentSpec(
        inputs=(_t("speech_ids", "int64", "N", "P"), _t("speech_mask", "float32", "N", "P")),
        outputs=(_t("speech_emb", "float32", "N", "P", "$speech_dim"),),
    ),
    "denoiser": ComponentSpec(
        inputs=(
            _t("video_latent", "float32", "N", "$C_v", "F", "$H_lat", "$W_lat"),
            _t("audio_latent", "float32", "N", "$S", "T", "$C_a"),
            _t("t_video", "float32", "N"),
            _t("t_audio", "float32", "N"),
            _t("text_emb", "float32", "N", "L", "$text_dim"),
            _t("text_mask", "float32", "N", "L"),
            _t("audio_text_emb", "float32", "N", "LA", "$text_dim"),
            _t("audio_text_mask", "float32", "N", "LA"),
            _t("speech_emb", "float32", "N", "P", "$speech_dim"),
            _t("speech_mask", "float32", "N", "P"),
            _t("ref_latent", "float32", "N", "R", "$C_a"),
            _t("ref_mask", "float32", "N", "R"),
        ),
        outputs=(
            _t("video_velocity", "float32", "N", "$C_v", "F", "$H_lat", "$W_lat"),
            _t("audio_velocity", "float32", "N", "$S", "T", "$C_a"),
        ),
    ),
    "video_decoder": ComponentSpec(
        inputs=(_t("video_latent", "float32", "N", "$C_v", "F", "$H_lat", "$W_lat"),),
        outputs=(_t("frames", "float32", "N", 3, "FP", "$height", "$width"),),
    ),
    "video_encoder": ComponentSpec(
        inputs=(_t("frames", "float32", "N", 3, "FP", "$height", "$width"),),
        outputs=(_t("video_latent", "float32", "N", "$C_v", "F", "$H_lat", "$W_lat"),),
    ),
    "audio_decoder": ComponentSpec(
        inputs=(_t("audio_latent", "float32", "N", "T", "$C_a"),),
        outputs=(_t("waveform", "float32", "N", "W"),),
    ),
    "audio_encoder": ComponentSpec(
        inputs=(_t("waveform", "float32", "N", "W"),),
        outputs=(_t("audio_latent", "float32", "N", "T", "$C_a"),),
    ),
}

# Every bundle has all of these: a text -> audio + video generation runs each one (the encoders of the null
# audio and video included). FILES: the keys of manifest["files"] it reads (the tokenizers).
COMPONENTS: tuple[str, ...] = tuple(_TEMPLATE)
FILES: tuple[str, ...] = ("tokenizer_text", "tokenizer_speech")


def resolve(geometry: dict) -> dict[str, ComponentSpec]:
    """Fill the $-dimensions of every component from a manifest `geometry` dict."""

    def dim(d):
        if isinstance(d, str) and d.startswith("$"):
            return int(geometry[d[1:]])
        return d

    out = {}
    for name, spec in _TEMPLATE.items():
        out[name] = ComponentSpec(
            inputs=tuple(TensorSpec(t.name, t.dtype, tuple(dim(x) for x in t.shape)) for t in spec.inputs),
            outputs=tuple(TensorSpec(t.name, t.dtype, tuple(dim(x) for x in t.shape)) for t in spec.outputs),
        )
    return out


@dataclass
class Geometry:
    """Latent and media geometry of a model: everything the runtime needs to size tensors and media."""

    fps: float
    height: int
    width: int
    sample_rate: int
    C_v: int  # video latent channels
    C_a: int  # audio latent channels
    S: int  # audio streams: 1 (Harmony: mix) or 2 (Unison: speech, sfx)
    video_t_stride: int  # pixel frames per latent frame
    video_s_stride: int  # pixels per latent cell (each side)
    audio_hop: int  # waveform samples per audio latent frame
    text_dim: int
    speech_dim: int
    max_text_tokens: int
    max_speech_chars: int
    max_latent_frames: int  # longest clip the model was built for, in video latent frames
    patch: tuple = (1, 2, 2)

    @property
    def H_lat(self) -> int:
        return self.height // self.video_s_stride

    @property
    def W_lat(self) -> int:
        return self.width // self.video_s_stride

    def audio_frames_for(self, video_latent_frames: int) -> int:
        """Audio latent frames covering the same duration as `video_latent_frames`."""
        seconds = video_latent_frames * self.video_t_stride / self.fps
        return int(round(seconds * self.sample_rate / self.audio_hop))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch"] = list(self.patch)
        d["H_lat"], d["W_lat"] = self.H_lat, self.W_lat
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        keys = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in keys}
        if "patch" in kw:
            kw["patch"] = tuple(kw["patch"])
        return cls(**kw)


def example_feeds(spec: ComponentSpec, sizes: dict[str, int], vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible inputs of one component, shaped by its contract (`sizes` fills the symbolic dims): ids in
    [3, vocab), masks with a padded tail in every row but the first, timesteps in [0, 1) with a clean (t = 0)
    first row, frames in [-1, 1], waveforms in [-0.5, 0.5], latents and embeddings ~ N(0, 1). Export traces
    and checks parity on these; shrink checks its fp16 weight storage on them."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in spec.inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in t.shape)
        if t.dtype == "int64":
            x = rng.integers(3, vocab, shape, dtype=np.int64)
        elif t.name.endswith("_mask"):
            x = np.ones(shape, np.float32)
            x[1:, -2:] = 0.0
        elif t.name.startswith("t_"):
            x = rng.random(shape, dtype=np.float32)
            x[0] = 0.0
        elif t.name == "frames":
            x = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
        elif t.name == "waveform":
            x = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
        else:
            x = rng.standard_normal(shape, dtype=np.float32)
        feeds[t.name] = x
    return feeds
