"""The demo page's figures: images stacked one above the other on one colour scale, saved as a small PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffwave.fileio import atomic_write  # noqa: E402


def save_stacked_images(path: Path, panels: dict[str, np.ndarray], *, vmin: float, vmax: float, ylabel: str,
                        xlabel: str, panel_height: float, extent: tuple[float, float, float, float] | None = None
                        ) -> None:
    """One panel per (title, image) in order, sharing the x axis and the colour scale [vmin, vmax]."""
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, panel_height * len(panels)), sharex=True)
    for axis, (title, image) in zip(axes, panels.items(), strict=True):
        axis.imshow(image, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma", extent=extent)
        axis.set_title(title, fontsize=9)
        axis.set_ylabel(ylabel)
    axes[-1].set_xlabel(xlabel)
    figure.tight_layout()
    with atomic_write(path) as temp:
        figure.savefig(temp, dpi=60, format="png")
    plt.close(figure)
