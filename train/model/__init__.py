"""The Harmony model: denoiser + conditioning encoders + autoencoders, as one module tree."""

from __future__ import annotations

from torch import nn

from ..configs import HarmonyConfig
from .autoencoders import AudioAutoencoder, VideoAutoencoder
from .dit import HarmonyDenoiser
from .encoders import SpeechEncoder, TextEncoder


class HarmonyModel(nn.Module):
    """Everything a bundle is exported from. Submodule names are the checkpoint's key prefixes."""

    def __init__(self, cfg: HarmonyConfig):
        super().__init__()
        self.cfg = cfg
        self.denoiser = HarmonyDenoiser(cfg)
        self.text_encoder = TextEncoder(cfg.text_vocab, cfg.text_dim, cfg.text_layers, cfg.max_text_tokens)
        self.speech_encoder = SpeechEncoder(cfg.speech_vocab, cfg.speech_dim, cfg.speech_layers, cfg.max_speech_chars)
        self.video_ae = VideoAutoencoder(cfg)
        self.audio_ae = AudioAutoencoder(cfg)


__all__ = ["HarmonyModel", "HarmonyDenoiser", "TextEncoder", "SpeechEncoder", "VideoAutoencoder", "AudioAutoencoder"]
