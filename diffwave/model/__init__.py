"""The DiffWave network."""

from diffwave.model.diffwave import DiffWave

__all__ = ["DiffWave"]
