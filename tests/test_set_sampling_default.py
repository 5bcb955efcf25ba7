"""recipes/pretrained/set_sampling_default.py: a shipped voice's default start changes, its weights do not."""

import importlib.util
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffwave import pretrained
from diffwave.checkpoints.compatibility import current_keys
from diffwave.inference.vocoder import Vocoder

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("set_sampling_default",
                                              REPO / "recipes" / "pretrained" / "set_sampling_default.py")
script = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(script)


def metadata_of(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as file:
        return dict(file.metadata())


def test_the_default_start_is_rewritten_and_the_weights_kept(tmp_path):
    model = pretrained.find()
    folder = tmp_path / "pretrained"
    shutil.copytree(pretrained.pretrained_dir(), folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    before = metadata_of(folder / model.file)
    assert script.main(["griffin-lim", "2", "--folder", str(folder)]) == 0
    path = folder / model.file
    after = metadata_of(path)
    assert {key for key in before if before[key] != after.get(key)} == {"config"} and before.keys() == after.keys()
    old, new = current_keys(json.loads(before["config"])), json.loads(after["config"])
    assert (new["diffusion"].pop("init"), new["diffusion"].pop("init_start_step")) == ("griffin-lim", 2)
    old["diffusion"].pop("init", None), old["diffusion"].pop("init_start_step", None)
    assert new == old  # every other setting kept (in today's key names: an old file's are mapped as it loads)
    weights, shipped = load_file(path), load_file(model.path)
    assert weights.keys() == shipped.keys() and all(torch.equal(weights[k], shipped[k]) for k in weights)
    (entry,) = [m for m in pretrained.read_manifest(folder) if m.name == model.name]
    assert entry.sha256 == pretrained.sha256_of(path) != model.sha256
    card = (folder / model.card).read_text()
    assert f"sha256 `{entry.sha256}`" in card and model.sha256 not in card
    assert "  init: griffin-lim\n  init_start_step: 2\n" in card
    vocoder = Vocoder.from_checkpoint(path, device="cpu")
    assert (vocoder.config.diffusion.init, vocoder.config.diffusion.init_start_step, len(vocoder.plan())) == (
        "griffin-lim", 2, 2)
    assert script.main(["noise", "3", "--folder", str(folder)]) == 2  # refused: noise takes no start step
    assert metadata_of(path) == after
