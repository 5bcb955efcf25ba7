"""Inference: the vocoder (checkpoint + mel -> waveform), unconditional generation (`generate`) and zero-shot
denoising (`denoise`); their functions are exported from the top-level package, which keeps the submodule
names free here."""

from diffwave.inference.vocoder import Vocoder

__all__ = ["Vocoder"]
