"""Audio front-end: validated reading and atomic writing (io), and the log-mel presets (mel)."""

from __future__ import annotations

from diffwave.audio.io import as_mono, read_audio, write_audio
from diffwave.audio.mel import LogMel, min_samples, num_frames, reflect_padding

__all__ = ["LogMel", "as_mono", "min_samples", "num_frames", "read_audio", "reflect_padding", "write_audio"]
