"""Evaluation: objective metrics (metrics.py), a vocoded folder scored against a feature folder's split
(folders.py), the held-out comparison against Griffin-Lim behind the model cards and the demo (heldout.py), and
denoising against network-free baselines on noisy held-out speech (denoising.py).

It sits beside checkpoints/ in the layers (DESIGN.md): it may use model, data and audio, never inference or
training; what it scores comes in as values (a vocoder is anything with `VocoderLike`'s methods)."""
