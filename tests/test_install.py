"""meshtrain installs as one package: a wheel puts `meshtrain` (and its dist-info) in site-packages and
nothing else, carries the shipped configs and launch templates as package data, and runs from an
unrelated directory with no source tree on the path, even beside a user's own model.py and tools/.

The wheel goes into a fresh venv with --no-deps; the venv sees this environment's dependencies
(jax, flax, ...) through a .pth path entry, so the test needs no network and installs in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel, makes a venv, runs the installed commands

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".git", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".venv*")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of the tree (the checkout is left as it was)."""
    source, out = tmp_path_factory.mktemp("source") / "meshtrain", tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (built,) = out.glob("meshtrain-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed and this environment's dependencies on its path."""
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Path entries only: the .pth files of these directories (this checkout's editable install among
    # them) are not run, so the source tree stays off the venv's path.
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()}
    (Path(purelib) / "dependencies.pth").write_text("\n".join(sorted(p for p in ours if os.path.isdir(p))) + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)], check=True)
    return root


@pytest.fixture
def user_dir(tmp_path) -> Path:
    """An unrelated working directory holding a research repo's own model.py and tools/ package."""
    (tmp_path / "model.py").write_text("raise ImportError('the user model.py was imported')\n")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("raise ImportError('the user tools/ was imported')\n")
    return tmp_path


def _run(venv: Path, cwd: Path, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1", JAX_PLATFORMS="cpu")
    result = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_wheel_installs_one_package_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"meshtrain", wheel.name.split("-py3")[0] + ".dist-info"}
    assert not any(name.startswith("meshtrain/__init__") for name in names)  # a namespace: no folder of its own
    for shipped in (
        "meshtrain/configs/base.yaml",
        "meshtrain/configs/hardware.yaml",
        "meshtrain/configs/experiment/palm-540b-v4-6144.yaml",
        "meshtrain/configs/gin/default.gin",
        "meshtrain/configs/model/palm-540b.yaml",
        "meshtrain/trainer/launch/templates/tpu_vm.sh.tmpl",
    ):
        assert shipped in names, shipped
    top_level = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("top_level.txt"))).decode()
    assert top_level.split() == ["meshtrain"]


def test_the_installed_package_comes_from_the_venv_not_the_source_tree(venv, user_dir):
    out = _run(
        venv,
        user_dir,
        "python",
        "-c",
        "import meshtrain.trainer.config.paths as p, meshtrain.model.decoder as d; "
        "print(p.CONFIG_DIR); print(d.__file__)",
    ).stdout.split()
    assert all(Path(path).is_relative_to(venv) for path in out), out
    assert not any(Path(path).is_relative_to(ROOT) for path in out), out


def test_meshtrain_train_runs_from_an_unrelated_directory(venv, user_dir, data_dir, small_model):
    result = _run(
        venv,
        user_dir,
        "meshtrain",
        "train",
        "train.steps=3",
        *small_model,
        f"data.data_dir={data_dir}",
        "train.eval_every=0",
        "--no-progress",
    )
    assert "steps 0->3" in result.stdout, result.stdout
    run = user_dir / "runs" / "default"
    assert (run / "config.yaml").is_file() and (run / "report.md").is_file() and (run / "checkpoints" / "3").is_dir()


def test_meshtrain_cost_and_launch_find_their_shipped_files(venv, user_dir):
    cost = json.loads(
        _run(venv, user_dir, "python", "-m", "meshtrain.tools", "cost", "palm-540b-v4-6144", "--json").stdout
    )
    assert (cost["chips"], cost["hardware"]) == (6144, "tpu-v4") and "predicted" in cost["mfu_source"]
    # The performance model reads configs/published_runs.yaml and hardware.yaml's efficiency families.
    validation = json.loads(_run(venv, user_dir, "meshtrain", "plan", "--validate", "--json").stdout)
    assert validation["summary"]["count"] == len(validation["runs"]) > 60
    recipe = _run(venv, user_dir, "meshtrain", "launch", "palm-540b-v4-6144", "--recipe", "tpu-vm").stdout
    assert "gcloud compute tpus" in recipe and "meshtrain train palm-540b-v4-6144" in recipe
