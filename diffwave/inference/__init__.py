"""Inference: the vocoder (checkpoint + mel -> waveform), unconditional generation and zero-shot denoising."""

from diffwave.inference.denoise import Denoised, denoise
from diffwave.inference.generate import generate
from diffwave.inference.loading import load_unconditional
from diffwave.inference.vocoder import Vocoder

__all__ = ["Denoised", "Vocoder", "denoise", "generate", "load_unconditional"]
