"""Inference: the vocoder (checkpoint + mel -> waveform), with batching and chunked long inputs."""

from diffwave.inference.vocoder import Vocoder

__all__ = ["Vocoder"]
