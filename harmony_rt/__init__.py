"""harmony-rt: a torch-free runtime for joint audio-video generation (Harmony / Unison)."""

__version__ = "0.1.0"
