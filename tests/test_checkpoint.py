"""Checkpoints: weights_only round trip, refusal of pickled code, atomic saves under SIGKILL and full disks,
corrupt newest checkpoints, exact RNG restore, config compatibility and safetensors export (RELIABILITY A-C, H45).
"""

import copy
import errno
import json
import os
import pickle
import random
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from diffwave.checkpoints import (
    FORMAT_VERSION,
    capture_rng_state,
    check_compatible,
    export_safetensors,
    latest_checkpoint,
    load_checkpoint,
    load_model,
    load_model_weights,
    load_safetensors,
    restore_rng_state,
    save_checkpoint,
)
from diffwave.config import config_to_dict, load_config
from diffwave.errors import CheckpointError, ConfigError
from diffwave.model import DiffWave

ROOT = Path(__file__).resolve().parents[1]


def realistic_state() -> dict:
    """What the trainer saves, in miniature: model, EMA, Adam after a scaled step, scheduler, scaler, RNG."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.randn(4, 3)).square().mean()).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    with torch.no_grad():
        ema.weight.mul_(0.5)
    return {
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(load_config("tiny")),
        "step": 7,
        "epoch": 1,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": capture_rng_state({"noise": torch.Generator().manual_seed(3)}),
    }


def small_state(value: float) -> dict:
    return {"config": config_to_dict(load_config("tiny")), "step": int(value),
            "model": {"w": torch.full((64,), value)}, "ema": {"w": torch.full((64,), value / 2)}}


def assert_same(saved, loaded) -> None:
    assert type(loaded) is type(saved)
    if isinstance(saved, torch.Tensor):
        assert saved.dtype == loaded.dtype and torch.equal(saved, loaded)
    elif isinstance(saved, dict):
        assert saved.keys() == loaded.keys()
        for key in saved:
            assert_same(saved[key], loaded[key])
    elif isinstance(saved, list | tuple):
        assert len(saved) == len(loaded)
        for a, b in zip(saved, loaded, strict=True):
            assert_same(a, b)
    else:
        assert saved == loaded


def strays(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob(".*.tmp"))


# --- A6: everything we save loads under plain weights_only --------------------------------------------
def test_realistic_state_loads_with_plain_weights_only_and_no_allow_list(tmp_path):
    state = realistic_state()
    # nobody widened the allow-list (torch.distributed registers builtin exceptions and tracebacks itself)
    allowed = [entry[0] if isinstance(entry, tuple) else entry for entry in torch.serialization.get_safe_globals()]
    assert [entry for entry in allowed if not entry.__module__.startswith(("torch", "builtins", "traceback"))] == []
    path = save_checkpoint(tmp_path, 7, state, keep_last=3)
    assert path == tmp_path / "checkpoints" / "step_00000007.pt"
    loaded = torch.load(path, weights_only=True)
    assert_same(state, loaded)
    assert_same(state, load_checkpoint(path))


@pytest.mark.parametrize(("value", "kind"), [
    (np.float64(0.5), "numpy.float64"),
    (np.zeros(2), "numpy.ndarray"),
    (Path("runs/x"), "PosixPath" if os.name == "posix" else "WindowsPath"),
    (np.random.get_state(), "numpy.ndarray"),
])
def test_types_that_weights_only_refuses_are_rejected_before_saving(tmp_path, value, kind):
    state = realistic_state()
    state["rng"]["extra"] = [1, value]
    with pytest.raises(TypeError, match=rf"state\['rng'\]\['extra'\]\[1\].*{kind}"):
        save_checkpoint(tmp_path, 1, state, keep_last=3)
    assert not (tmp_path / "checkpoints").exists()


# --- A1, A2: pickled code is refused and never runs -----------------------------------------------------
class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_with_reduce_to_os_system_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "run" / "checkpoints" / "step_00000001.pt"
    evil.parent.mkdir(parents=True)
    torch.save({"format_version": 1, "model": RunsCode(marker)}, evil)
    (evil.parent / "latest").write_text(evil.name)
    for load in (load_checkpoint, load_model_weights, lambda _: latest_checkpoint(tmp_path / "run")):
        with pytest.raises(CheckpointError) as info:
            load(evil)
        message = str(info.value)
        assert str(evil) in message and "\n" not in message
        assert re.search(r"(posix|os)\.system", message) and "no code ran" in message
    assert not marker.exists()


def test_legacy_pickle_renamed_pt_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "MARKER"
    legacy = tmp_path / "model.pt"
    with legacy.open("wb") as file:
        pickle.dump({"format_version": 1, "model": RunsCode(marker)}, file)
    for load in (load_checkpoint, load_model_weights):
        with pytest.raises(CheckpointError, match=r"not a zip-format torch checkpoint.*no code ran.*system") as info:
            load(legacy)
        assert str(legacy) in str(info.value)
    assert not marker.exists()


# --- A3, A4: safetensors files are checked before they are trusted --------------------------------------
META = {"__metadata__": {"format": "diffwave", "format_version": "1", "config": "{}", "step": "0"}}


def write_safetensors(path: Path, header: dict, data: bytes, length: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize(("header", "data", "length", "message"), [
    (META, b"", 200_000_000, "not a safetensors file"),
    ({**META, "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8), None, "corrupt"),
    ({**META, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), None, "corrupt"),
    ({**META, "w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, bytes(16), None, "corrupt"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(16), None, "without diffwave metadata"),
    ({"__metadata__": {"format": "other", "config": "{}"}}, b"", None, "without diffwave metadata"),
    ({"__metadata__": {**META["__metadata__"], "format_version": "2"}}, b"", None,
     r"safetensors format v2 is not supported \(this diffwave reads v1\)"),
], ids=["header-over-100MB", "offsets-past-end", "overlapping-offsets", "span-mismatch", "no-metadata",
        "foreign-metadata", "future-version"])
def test_damaged_safetensors_give_one_line_errors(tmp_path, header, data, length, message):
    path = write_safetensors(tmp_path / "model.safetensors", header, data, length)
    for load in (load_safetensors, load_model_weights):
        with pytest.raises(CheckpointError, match=message) as info:
            load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_well_formed_hand_written_safetensors_file_loads(tmp_path):
    """The positive control for the damaged files above: the same layout, consistent, loads."""
    data = struct.pack("<4f", 1, 2, 3, 4)
    path = write_safetensors(tmp_path / "model.safetensors",
                             {**META, "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, data)
    weights, config = load_safetensors(path)
    assert torch.equal(weights["w"], torch.tensor([1.0, 2, 3, 4])) and config == {}


def test_torch_files_renamed_safetensors_are_named_as_such(tmp_path):
    checkpoint = save_checkpoint(tmp_path, 1, small_state(1.0), keep_last=1)
    renamed = tmp_path / "model.safetensors"
    renamed.write_bytes(checkpoint.read_bytes())
    legacy = tmp_path / "legacy.safetensors"
    legacy.write_bytes(pickle.dumps({"w": 1}))
    for path in (renamed, legacy):
        with pytest.raises(CheckpointError, match=r"not a safetensors file \(looks like a torch checkpoint"):
            load_safetensors(path)


def test_export_round_trip_gives_the_ema_weights_and_config(tmp_path):
    state = realistic_state()
    checkpoint = save_checkpoint(tmp_path, 7, state, keep_last=1)
    exported = export_safetensors(checkpoint, tmp_path / "model.safetensors")
    weights, config = load_safetensors(exported)
    assert_same(dict(state["ema"]), weights)
    assert config == state["config"]
    assert_same((dict(state["ema"]), state["config"]), load_model_weights(exported))
    assert_same((dict(state["ema"]), state["config"]), load_model_weights(checkpoint))
    raw, _ = load_safetensors(export_safetensors(checkpoint, tmp_path / "raw.safetensors", use_ema=False))
    assert_same(dict(state["model"]), raw)
    assert not torch.equal(raw["weight"], weights["weight"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_checkpoint_without_ema_gives_its_model_weights(tmp_path):
    state = small_state(3.0)
    del state["ema"]
    weights, _ = load_model_weights(save_checkpoint(tmp_path, 3, state, keep_last=1))
    assert torch.equal(weights["w"], state["model"]["w"])


# --- B7, B9: SIGKILL during a save --------------------------------------------------------------------
HANGING_SAVE = r"""
import os, sys, time
from pathlib import Path
import torch
from diffwave import checkpoints as checkpoint

run_dir, flag, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
real_replace, renames = os.replace, []

def hang():
    flag.write_text("hanging")
    time.sleep(600)

def save(obj, path):  # half a file, then stuck: killed mid-write
    Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
    hang()

def replace(source, target):  # stuck before the n-th rename: 1 = the step file, 2 = the pointer
    renames.append(target)
    if len(renames) == {"before-rename": 1, "before-pointer": 2}[mode]:
        hang()
    real_replace(source, target)

if mode == "mid-write":
    torch.save = save
else:
    os.replace = replace
checkpoint.save_checkpoint(run_dir, 2, {"model": {"w": torch.full((64,), 2.0)}}, keep_last=5)
"""


@pytest.mark.parametrize("mode", ["mid-write", "before-rename", "before-pointer"])
def test_a_save_killed_at_any_point_leaves_the_previous_checkpoint_as_latest(tmp_path, mode):
    previous = save_checkpoint(tmp_path, 1, small_state(1.0), keep_last=5)
    before = previous.read_bytes()
    flag = tmp_path / "hanging"
    process = subprocess.Popen([sys.executable, "-c", HANGING_SAVE, str(tmp_path), str(flag), mode], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the save never reached its hanging point"
            time.sleep(0.05)
        assert strays(tmp_path)  # it had started writing
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert latest_checkpoint(tmp_path) == previous
    assert previous.read_bytes() == before
    assert_same(small_state(1.0)["model"], load_checkpoint(previous)["model"])
    assert len(strays(tmp_path)) == 1
    # the pointer is written last: a step file that landed without its pointer is not "latest"
    assert (tmp_path / "checkpoints" / "step_00000002.pt").exists() == (mode == "before-pointer")
    newest = save_checkpoint(tmp_path, 3, small_state(3.0), keep_last=5)
    assert strays(tmp_path) == [] and latest_checkpoint(tmp_path) == newest


# --- B8: disk full --------------------------------------------------------------------------------------
def test_a_save_that_fails_mid_write_leaves_the_target_untouched(tmp_path, monkeypatch):
    target = save_checkpoint(tmp_path, 5, small_state(1.0), keep_last=3)
    before = target.read_bytes()

    def full_disk(obj, path):
        Path(path).write_bytes(b"PK\x03\x04 some bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint step_00000005.pt in .*No space left on "
                                              r"device; the last good checkpoint is still .*step_00000005.pt"):
        save_checkpoint(tmp_path, 5, small_state(2.0), keep_last=3)
    assert target.read_bytes() == before
    assert strays(tmp_path) == []
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == target.name


# --- keep-last-N and the pointer ------------------------------------------------------------------------
def test_keep_last_keeps_the_newest_and_latest_points_at_the_newest(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    paths = [save_checkpoint(tmp_path, step, small_state(step), keep_last=2) for step in (10, 20, 30, 40)]
    assert sorted((tmp_path / "checkpoints").glob("step_*.pt")) == paths[2:]
    assert latest_checkpoint(tmp_path) == paths[-1]
    assert load_checkpoint(paths[-1])["step"] == 40


# --- C16, H46: corrupt newest, missing pointer target, unknown format -------------------------------------
@pytest.mark.parametrize(("damage", "message"), [("truncated", "truncated or corrupt"), ("empty", "empty")])
def test_a_corrupt_newest_checkpoint_names_itself_and_the_older_valid_one(tmp_path, damage, message):
    older = save_checkpoint(tmp_path, 1, small_state(1.0), keep_last=3)
    newest = save_checkpoint(tmp_path, 2, small_state(2.0), keep_last=3)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(newest)
    assert str(newest) in str(info.value)
    with pytest.raises(CheckpointError, match=message) as info:
        latest_checkpoint(tmp_path)
    text = str(info.value)
    assert str(newest) in text and str(older) in text and "\n" not in text


def test_a_pointer_to_a_missing_file_is_an_error_not_a_silent_fallback(tmp_path):
    older = save_checkpoint(tmp_path, 1, small_state(1.0), keep_last=3)
    newest = save_checkpoint(tmp_path, 2, small_state(2.0), keep_last=3)
    newest.unlink()
    with pytest.raises(CheckpointError, match=rf"{newest.name}, which does not exist.*{older.name}"):
        latest_checkpoint(tmp_path)
    older.unlink()
    with pytest.raises(CheckpointError, match="no older valid checkpoint"):
        latest_checkpoint(tmp_path)


def test_checkpoints_without_a_pointer_are_an_error_naming_the_newest_valid_one(tmp_path):
    valid = save_checkpoint(tmp_path, 1, small_state(1.0), keep_last=3)
    save_checkpoint(tmp_path, 2, small_state(2.0), keep_last=3).write_bytes(b"")
    (tmp_path / "checkpoints" / "latest").unlink()
    with pytest.raises(CheckpointError, match=rf"no 'latest' pointer.*write '{valid.name}' into"):
        latest_checkpoint(tmp_path)


def test_unknown_format_versions_are_refused_by_version(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({**small_state(1.0), "format_version": 99}, path)
    with pytest.raises(CheckpointError, match=r"checkpoint format v99 is not supported \(this diffwave reads v1\)"):
        load_checkpoint(path)
    torch.save(small_state(1.0), path)
    with pytest.raises(CheckpointError, match="no format_version"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


# --- C17: RNG state ---------------------------------------------------------------------------------------
def draws(generator: torch.Generator) -> tuple:
    return torch.rand(4), random.random(), torch.randn(4, generator=generator)


def test_rng_state_survives_a_checkpoint_and_restores_every_stream(tmp_path):
    generator = torch.Generator().manual_seed(11)
    path = save_checkpoint(tmp_path, 1, {"rng": capture_rng_state({"noise": generator})}, keep_last=1)
    first = draws(generator)
    draws(generator)
    restore_rng_state(load_checkpoint(path)["rng"], {"noise": generator})
    assert_same(first, draws(generator))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda state: state.update(torch=state["torch"][:100]), "torch CPU"),
    (lambda state: state.update(torch=state["torch"].float()), "torch CPU.*uint8"),
    (lambda state: state["python"].update(state=[1, 2, 3]), "Python"),
    (lambda state: state.pop("python"), "Python.*missing 'python'"),
    (lambda state: state["generators"].update(noise=state["generators"]["noise"][:10]), "'noise' generator"),
    (lambda state: state.pop("generators"), "generator.*missing"),
    (lambda state: state["generators"].clear(), "has none for noise"),
])
def test_restoring_a_damaged_rng_state_is_an_error(damage, message):
    generator = torch.Generator().manual_seed(5)
    state = capture_rng_state({"noise": generator})
    damage(state)
    with pytest.raises(CheckpointError, match=message):
        restore_rng_state(state, {"noise": generator})


# --- C14: config compatibility ------------------------------------------------------------------------------
def test_shape_changing_config_differences_are_refused_and_listed():
    saved = config_to_dict(load_config("tiny"))
    changed = load_config("tiny", ["model.residual_channels=16", "audio.n_mels=40", "audio.hop_length=128"])
    with pytest.raises(CheckpointError) as info:
        check_compatible(saved, changed)
    text = str(info.value)
    for field in ("model.residual_channels: saved 8 != now 16", "audio.n_mels: saved 20 != now 40",
                  "audio.hop_length: saved 64 != now 128"):
        assert field in text
    with pytest.raises(CheckpointError, match="diffusion.num_steps"):
        check_compatible(saved, load_config("tiny", ["diffusion.num_steps=20"]))


def test_other_config_differences_are_allowed_and_returned():
    saved = config_to_dict(load_config("tiny"))
    assert check_compatible(saved, load_config("tiny")) == []
    notes = check_compatible(saved, load_config("tiny", ["train.learning_rate=0.0005", "train.log_every=5"]))
    assert notes == ["train.learning_rate: saved 0.001 != now 0.0005", "train.log_every: saved 10 != now 5"]


# --- model.prediction replaced distill.student: files written before still load -----------------------------
def config_before_prediction(student: bool) -> dict:
    """A tiny config dict as checkpoints wrote it before model.prediction: a student marked by distill.student."""
    values = config_to_dict(load_config("tiny"))
    del values["model"]["prediction"]
    return values | {"distill": {**values["distill"], "student": student}}


@pytest.mark.parametrize(("student", "prediction"), [(True, "consistency"), (False, "epsilon")])
def test_checkpoints_marked_by_distill_student_load_with_model_prediction(tmp_path, student, prediction):
    weights = DiffWave.from_config(load_config("tiny")).state_dict()
    state = {"config": config_before_prediction(student), "step": 1, "model": weights, "ema": weights}
    checkpoint = save_checkpoint(tmp_path, 1, state, keep_last=1)
    exported = export_safetensors(checkpoint, tmp_path / "model.safetensors")
    assert "student" not in load_safetensors(exported)[1]["distill"]  # exports are written in today's keys
    for path in (checkpoint, exported):
        _, config = load_model(path)
        assert config.model.prediction == prediction
    now = load_config("tiny", [f"model.prediction={prediction}"])
    assert check_compatible(config_before_prediction(student), now) == []  # a resume of an old run goes on
    with pytest.raises(CheckpointError, match="model.prediction"):
        check_compatible(config_before_prediction(not student), now)


@pytest.mark.parametrize(("student", "prediction"), [(True, "consistency"), (False, "epsilon")])
def test_a_safetensors_file_written_with_distill_student_loads_unchanged(tmp_path, student, prediction):
    """As the shipped voice was written until step 9660: an export in the old keys loads, weights unchanged."""
    weights = {k: v.contiguous() for k, v in DiffWave.from_config(load_config("tiny")).state_dict().items()}
    path = tmp_path / "old.safetensors"
    save_file(weights, str(path), metadata={"format": "diffwave", "format_version": str(FORMAT_VERSION),
                                            "config": json.dumps(config_before_prediction(student)), "step": "9660"})
    model, config = load_model(path)
    assert config.model.prediction == prediction
    assert_same(weights, dict(model.state_dict()))


# --- H45: no unsafe loading anywhere in the package -----------------------------------------------------------
def unsafe_loads(source: str) -> list[str]:
    """torch.load calls without weights_only=True (parentheses matched), pickle.load(s), allow_pickle=True."""
    found = []
    for match in re.finditer(r"torch\.load\(", source):
        depth, end = 1, match.end()
        while depth and end < len(source):
            depth += {"(": 1, ")": -1}.get(source[end], 0)
            end += 1
        call = source[match.start():end]
        if not re.search(r"weights_only\s*=\s*True", call):
            found.append(call)
    return found + re.findall(r"pickle\.loads?\(|allow_pickle\s*=\s*True", source)


def test_the_package_never_loads_pickles_unsafely():
    assert unsafe_loads("x = torch.load(path, map_location=device(0))\n")
    assert unsafe_loads("torch.load(\n    path,\n    weights_only=False)")
    assert unsafe_loads("pickle.load(f)") and unsafe_loads("np.load(p, allow_pickle=True)")
    assert not unsafe_loads("torch.load(path, map_location=torch.device('cpu'), weights_only=True)")
    sources = sorted((ROOT / "diffwave").rglob("*.py"))
    assert len(sources) > 10
    offenders = {str(path.relative_to(ROOT)): unsafe_loads(path.read_text()) for path in sources}
    assert {path: calls for path, calls in offenders.items() if calls} == {}


def test_inference_loader_names_a_renamed_torch_checkpoint(tmp_path):
    """RELIABILITY A4 through the path the vocoder uses, not only through load_safetensors."""
    from diffwave.checkpoints import load_model_weights

    path = tmp_path / "model.safetensors"
    torch.save({"format_version": 1, "ema": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model_weights(path)


def test_export_with_changes_keeps_weights_and_step_and_refuses_a_bad_config(tiny_checkpoint, tmp_path):
    first = export_safetensors(tiny_checkpoint, tmp_path / "a.safetensors")
    tuned = export_safetensors(first, tmp_path / "b.safetensors",
                               changes={"diffusion": {"fast_schedule": [0.001, 0.3]}})
    weights, config = load_safetensors(first)
    new_weights, new_config = load_safetensors(tuned)
    assert new_config["diffusion"]["fast_schedule"] == [0.001, 0.3]
    new_config["diffusion"]["fast_schedule"] = config["diffusion"]["fast_schedule"]
    assert new_config == config and weights.keys() == new_weights.keys()
    assert all(torch.equal(weights[name], new_weights[name]) for name in weights)
    with safe_open(str(tuned), framework="pt") as file:
        assert file.metadata()["step"] == str(load_checkpoint(tiny_checkpoint)["step"]) == "20"
    with pytest.raises(ConfigError, match="diffusion.init"):
        export_safetensors(first, tmp_path / "c.safetensors", changes={"diffusion": {"init": "bogus"}})
    assert not (tmp_path / "c.safetensors").exists()
    # A safetensors file under another name is told by its content, as loading tells it: same weights, step.
    renamed = tmp_path / "voice.bin"
    renamed.write_bytes(first.read_bytes())
    again = export_safetensors(renamed, tmp_path / "d.safetensors")
    with safe_open(str(again), framework="pt") as file:
        assert file.metadata()["step"] == "20"
    assert all(torch.equal(weights[name], load_safetensors(again)[0][name]) for name in weights)
