"""The command line as a user runs it: real subprocesses, exit codes, one-line errors."""

import subprocess
import sys
import warnings

import pytest
import yaml

import diffwave
from diffwave._torch_version import check_torch_version


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffwave", *args], capture_output=True, text=True, timeout=120)


def test_version_and_help():
    assert run("--version").stdout.strip() == f"diffwave {diffwave.__version__}"
    result = run("--help")
    assert result.returncode == 0 and "config" in result.stdout


def test_config_command_prints_the_resolved_yaml():
    result = run("config", "--config", "tiny", "train.batch_size=2")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["train"]["batch_size"] == 2 and printed["name"] == "tiny"


@pytest.mark.parametrize("args", [("config", "train.nope=1"), ("config", "--config", "missing.yaml")])
def test_user_errors_are_one_line_with_exit_code_2(args):
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("diffwave: error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_old_torch_is_warned_about():
    with pytest.warns(RuntimeWarning, match=r"torch 2\.5\.1 is older than 2\.10.*CVE-2025-32434"):
        assert not check_torch_version("2.5.1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_torch_version("2.14.1+cu130")


def test_overrides_may_follow_options_after_positionals(tmp_path):
    result = run("preprocess", str(tmp_path / "missing"), str(tmp_path / "out"), "--jobs", "1", "train.batch_size=2")
    assert result.returncode == 2 and "corpus folder" in result.stderr and "does not exist" in result.stderr
    unknown = run("preprocess", str(tmp_path / "c"), str(tmp_path / "o"), "--jobs", "1", "--bogus")
    assert unknown.returncode == 2 and "unrecognized arguments: --bogus" in unknown.stderr
