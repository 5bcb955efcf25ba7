"""recipes/pretrained/ship.py on a tiny trained checkpoint, into a scratch folder: what it writes agrees with
itself (weights, sha256 in manifest and card, README table, history), and a leaked held-out clip is refused."""

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from diffwave import pretrained
from diffwave.checkpoints import load_model_weights
from diffwave.inference.vocoder import Vocoder

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("ship", REPO / "recipes" / "pretrained" / "ship.py")
ship = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ship)


def ship_args(tmp_path: Path, checkpoint: Path, features: Path) -> list[str]:
    return [str(checkpoint), "--features", str(features), "--name", "tiny", "--work", str(tmp_path / "work"),
            "--target", str(tmp_path / "target"), "--readme", str(tmp_path / "README.md"),
            "--history", str(tmp_path / "history.tsv"), "--crop-seconds", "1"]


@pytest.fixture
def scratch(tmp_path) -> Path:
    (tmp_path / "target").mkdir()
    readme = "# x\n" + ship.README_START + " (written by ship) -->\nold table\n" + ship.README_END + "\nrest\n"
    (tmp_path / "README.md").write_text(readme)
    return tmp_path


def test_ship_writes_weights_card_manifest_and_readme_that_agree(scratch, tiny_checkpoint, tiny_features):
    assert ship.main(ship_args(scratch, tiny_checkpoint, tiny_features)) == 0
    target = scratch / "target"
    (entry,) = pretrained.read_manifest(target)
    weights = (target / entry.file).read_bytes()
    digest = hashlib.sha256(weights).hexdigest()
    assert (entry.name, entry.default, entry.sha256) == ("tiny", True, digest)
    card = (target / entry.card).read_text()
    assert f"sha256 `{digest}`" in card and "step 20" in card
    assert (ship.HERE / "tried_configs.md").read_text().strip() in card  # the tried-configs table, verbatim
    assert "$" not in card.split("## Config")[0]  # every template field was filled
    exported, _ = load_model_weights(target / entry.file)
    trained, _ = load_model_weights(tiny_checkpoint)  # the EMA weights of the checkpoint
    assert exported.keys() == trained.keys() and all((exported[k] == trained[k]).all() for k in exported)
    assert (target / "tiny_curve.png").read_bytes().startswith(b"\x89PNG")
    readme = (scratch / "README.md").read_text()
    assert "old table" not in readme and readme.endswith(ship.README_END + "\nrest\n")
    assert "Step 20" in readme
    for clips in (ship.SEEN, ship.UNSEEN):  # every set has a row of each system, in the README and the card
        for system in ("DiffWave", "Griffin-Lim 100", "Griffin-Lim + envelope"):
            assert f"| {clips} | {system} |" in readme and f"| {clips} | {system} |" in card
    (row,) = ship.read_history(scratch / "history.tsv")
    assert row["step"] == "20" and 0 <= float(row["diffwave_stoi"]) <= 1
    shipped = Vocoder.from_checkpoint(target / entry.file)  # loads as shipped
    assert shipped.config.diffusion.finish == "none" and "tune-schedule" not in card


def test_ship_can_set_the_finish_and_tune_the_schedule_it_ships(scratch, tiny_checkpoint, tiny_features):
    assert ship.main([*ship_args(scratch, tiny_checkpoint, tiny_features), "--finish", "envelope",
                      "--tune-schedule", "--continues", "9660:15.42", "--cpu-hours", "0.5"]) == 0
    (entry,) = pretrained.read_manifest(scratch / "target")
    shipped = Vocoder.from_checkpoint(scratch / "target" / entry.file)
    card = (scratch / "target" / entry.card).read_text()
    assert shipped.config.diffusion.finish == "envelope" and "finish: envelope" in card
    assert "tuned by `diffwave tune-schedule`" in card
    # the run went on from 9660 steps and 15.42 CPU-hours: the card and the history count both parts
    assert "9680 steps of batch" in card and "= 15.92 CPU-hours (the last 20 steps in a run started" in card
    (row,) = ship.read_history(scratch / "history.tsv")
    assert (row["step"], row["cpu_hours"]) == ("9680", "15.92")
    betas = shipped.config.diffusion.fast_schedule
    assert "fast_schedule:\n" + "".join(f"  - {beta}\n" for beta in betas) in card  # the card shows the shipped one


def test_ship_refuses_features_that_hold_a_held_out_clip(scratch, tiny_checkpoint, tiny_features, capsys):
    features = scratch / "features"
    shutil.copytree(tiny_features, features)
    manifest = json.loads((features / "manifest.json").read_text())
    manifest["utterances"][0]["id"] = "LJ001-0003"
    (features / "manifest.json").write_text(json.dumps(manifest))
    assert ship.main(ship_args(scratch, tiny_checkpoint, features)) == 2
    assert "the held-out clips LJ001-0003 are in the training features" in capsys.readouterr().err
    assert list((scratch / "target").iterdir()) == []  # nothing written into the package


def test_the_card_credits_exactly_the_speakers_it_was_trained_on(tmp_path):
    def features(ids: list[str], split: str = "train") -> Path:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        utterances = [{"id": name, "split": split, "samples": 22050} for name in ids]
        (folder / "manifest.json").write_text(json.dumps({"audio": {"sample_rate": 22050},
                                                          "utterances": utterances}))
        return folder

    summary = ship.corpus_summary(features(["allison_a", "allison_b", "LJ003-0001", "carlo_x"]), ["LJ001-0001"])
    assert summary["corpus_counts"] == "2 Allison, 1 LJSpeech, 1 Carlo"
    assert summary["speakers"] == "Allison + LJSpeech + Carlo" and summary["train_minutes"] == "0.1"
    assert "Carlo Flora" in summary["credits"] and "CC-BY-3.0" in summary["credits"]
    assert "Maxim Topal" not in summary["credits"]  # IvrvoiceRU was not in this training set
    assert ship.corpus_summary(features(["allison_a", "clip00"]), [])["corpus_counts"] == "1 Allison, 1 other clips"
    for leaked, held_out in ((["allison_a", "june_x"], []), (["LJ001-0001"], ["LJ001-0001"])):
        with pytest.raises(ship.DiffwaveError, match="held-out clips"):
            ship.corpus_summary(features(leaked, split="valid"), held_out)
