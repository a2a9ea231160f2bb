"""harmony-rt: a torch-free runtime for joint audio-video generation (Harmony / Unison)."""

import os

__version__ = "0.1.0"

# ONNX Runtime's Linux / macOS wheels (1.32) collect usage telemetry and keep a device id under
# ~/.cache/Microsoft/DeveloperTools unless this is set before onnxruntime is first imported; off unless the user
# chose (ORT_DISABLE_TELEMETRY=0 allows it). An app that imported onnxruntime first has decided already.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
