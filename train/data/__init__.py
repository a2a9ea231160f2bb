"""Training data: the procedural audio-video dataset (`synth`), its espeak-ng speech and event sounds."""

from .speech import SPEAKERS, Speaker, have_espeak
from .synth import (
    CANONICAL_PROMPT,
    KINDS,
    Clip,
    SynthConfig,
    cached_dataset,
    canonical_clip,
    caption_vocabulary,
    make_clip,
    make_dataset,
    speaker_clips,
    transcript_charset,
)

__all__ = [
    "CANONICAL_PROMPT", "KINDS", "SPEAKERS", "Clip", "Speaker", "SynthConfig", "cached_dataset", "canonical_clip",
    "caption_vocabulary", "have_espeak", "make_clip", "make_dataset", "speaker_clips", "transcript_charset",
]
