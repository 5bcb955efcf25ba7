"""Set a shipped voice's default start (diffusion.init, diffusion.init_start_step) without touching its weights.

Usage (from the repository root):
    .venv/bin/python recipes/pretrained/set_sampling_default.py griffin-lim-envelope 1 [--name voice]
    .venv/bin/python recipes/pretrained/set_sampling_default.py noise [--name voice]

The weights file's config metadata is rewritten by `export_safetensors` (every other setting and the step
kept, the tensors saved back bit for bit, the new config checked first) and saved atomically; then the
manifest's sha256 and the model card's sha256 and `## Config` block follow the new file (the card shows the
file's config as saved, with these two keys set). The card's quality tables are not re-measured here: see
recipes/pretrained/ship.py and heldout.compare_sets.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from diffwave import pretrained
from diffwave.checkpoints import export_safetensors, load_safetensors
from diffwave.config import INITS
from diffwave.errors import DiffwaveError
from diffwave.fileio import atomic_write


def set_default(folder: Path, name: str, init: str, start_step: int | None) -> str:
    """Rewrite model `name` of the pretrained `folder` to start from `init` (K = start_step) by default; returns
    the new sha256."""
    models = pretrained.read_manifest(folder)
    model = next((m for m in models if m.name == name), None)
    if model is None:
        raise DiffwaveError(f"{folder}: no model '{name}' in its manifest")
    path = folder / model.file
    export_safetensors(path, path, changes={"diffusion": {"init": init, "init_start_step": start_step}})
    values = load_safetensors(path)[1]
    digest = pretrained.sha256_of(path)
    others = [replace(m, sha256=digest) if m.name == name else m for m in models]
    with atomic_write(folder / pretrained.MANIFEST) as temp:
        temp.write_text(pretrained.manifest_text(others))
    if model.card:
        card_path = folder / model.card
        config_yaml = yaml.safe_dump(values, sort_keys=False).strip()
        card, found = re.subn(r"(## Config\n```yaml\n).*?(\n```)", lambda m: m[1] + config_yaml + m[2],
                              card_path.read_text().replace(model.sha256, digest), count=1, flags=re.S)
        if not found:
            raise DiffwaveError(f"{card_path}: no ```yaml block under '## Config' to update")
        with atomic_write(card_path) as temp:
            temp.write_text(card)
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("init", choices=INITS)
    parser.add_argument("start_step", nargs="?", type=int, help="K: the plan's last states that refine the estimate")
    parser.add_argument("--name", default="voice")
    parser.add_argument("--folder", type=Path, default=pretrained.pretrained_dir())
    args = parser.parse_args(argv)
    try:
        digest = set_default(args.folder, args.name, args.init, args.start_step)
    except DiffwaveError as error:
        print(f"set_sampling_default: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.name}: diffusion.init={args.init} init_start_step={args.start_step}; sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
