"""Sharded training equals unsharded training, on 8 virtual CPU devices.

Each layout trains three steps on the same real batches as a 1-device run; losses and every
parameter must agree within 1e-5 relative (float32). Checkpoints written under one mesh must
restore bit-exactly under another mesh and another device count. Bad layouts fail before compiling,
naming what to change.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from meshtrain.trainer.config.batch_schedule import data_shards
from meshtrain.trainer.data import FEATURES, BatchStream, tokenizer_for
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.run.checkpoint import Checkpoints
from meshtrain.trainer.step.partition import (
    abstract_sharded_state,
    global_batch,
    init_sharded_state,
    jit_train_step,
    make_mesh,
    plan_run,
)
from meshtrain.trainer.step.state import model_def, optimizer_for

STEPS = 3
# Divisible by every layout below: batch 8, 4 heads, d_model 32, seq_len 32.
# Adam's first steps move every element by about lr * sign(gradient), so an element whose gradient
# is at float-rounding level can step either way depending on summation order; eps=1e-6 (not 1e-8)
# keeps such elements from moving a full step, so the comparison measures layouts, not noise.
MODEL = [
    "train.batch_size=8",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "optimizer.warmup_steps=0",
    "optimizer.eps=1e-6",
]

LAYOUTS = {
    "data=8": ["mesh.ici_data=8", "mesh.ici_fsdp=1"],
    "fsdp=8": ["mesh.ici_fsdp=8"],
    "fsdp=4,tensor=2": ["mesh.ici_fsdp=4", "mesh.ici_tensor=2"],
    "data=2,fsdp=2,tensor=2": ["mesh.ici_data=2", "mesh.ici_fsdp=2", "mesh.ici_tensor=2"],
    "fsdp=2,sequence=2,tensor=2": ["mesh.ici_fsdp=2", "mesh.ici_sequence=2", "mesh.ici_tensor=2"],
    "sequence=4,fsdp=2,microbatches=2": ["mesh.ici_sequence=4", "mesh.ici_fsdp=2", "train.microbatches=2"],
    # data x sequence without fsdp: reported to deadlock XLA's CPU collectives after the first step
    "data=4,sequence=2": ["mesh.ici_data=4", "mesh.ici_sequence=2", "mesh.ici_fsdp=1"],
    "data=2,sequence=4": ["mesh.ici_data=2", "mesh.ici_sequence=4", "mesh.ici_fsdp=1"],
}


def _features(batch: dict) -> dict:
    """What the train step takes of a batch (the provenance arrays stay on the host)."""
    return {k: batch[k] for k in FEATURES}


def _train(cfg, devices, steps=STEPS):
    mdef = model_def(cfg)
    optimizer = optimizer_for(cfg, mdef)
    plan = plan_run(cfg, mdef, optimizer, make_mesh(cfg, devices))
    state = init_sharded_state(cfg, mdef, optimizer, plan)
    step = jit_train_step(cfg, mdef, optimizer, plan)
    shards = data_shards(cfg.train, cfg.data.shards)
    stream = BatchStream(cfg.data, tokenizer_for(cfg.data, cfg.model.vocab_size), seed=cfg.seed, num_shards=shards)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, global_batch(plan, _features(stream.next_batch(cfg.train.batch_size))))
        losses.append(float(metrics["loss"]))
    return losses, state, plan


def _assert_close(actual, expected):
    """Relative error of the whole tensor below 1e-5. Element by element is the wrong measure
    after Adam: an element whose gradient is a near-cancelling sum of tiny terms gets an update
    m / sqrt(v) that amplifies float rounding, whatever the layout."""
    error = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert error <= 1e-5, f"relative error {error:.2e}"


@pytest.fixture(scope="module")
def reference(small_experiment, data_dir):
    losses, state, _ = _train(small_experiment(*MODEL, "mesh.ici_fsdp=1"), jax.devices()[:1])
    return losses, jax.device_get(state["params"])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sharded_training_equals_one_device(small_experiment, data_dir, reference, layout):
    losses, state, plan = _train(small_experiment(*MODEL, *LAYOUTS[layout]), jax.devices())
    expected_losses, expected_params = reference
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    jax.tree.map(_assert_close, jax.device_get(state["params"]), expected_params)
    # The layout really is sharded: the parameters live in pieces where the mesh says so.
    wq = state["params"]["layers"]["attention"]["query"]["kernel"]
    assert wq.sharding.spec == plan.state["params"]["layers"]["attention"]["query"]["kernel"].spec
    assert len(wq.sharding.device_set) == 8


def test_optimizer_state_is_sharded_like_parameters(small_experiment, data_dir):
    cfg = small_experiment(*MODEL, "mesh.ici_fsdp=4", "mesh.ici_tensor=2")
    mdef = model_def(cfg)
    optimizer = optimizer_for(cfg, mdef)
    plan = plan_run(cfg, mdef, optimizer, make_mesh(cfg))
    param_specs = {tuple(s.spec) for s in jax.tree.leaves(plan.state["params"])}
    moment_specs = {tuple(s.spec) for s in jax.tree.leaves(plan.state["opt_state"])}
    assert (None, "fsdp", "tensor", None) in param_specs  # The stacked query kernels.
    assert param_specs <= moment_specs  # Every parameter layout reappears in Adam's moments.


@pytest.mark.parametrize("target", ["tensor=2,fsdp=2 on 4 devices", "1 device"])
def test_checkpoint_restores_onto_another_mesh_exactly(small_experiment, data_dir, tmp_path, target):
    source = small_experiment(*MODEL, "mesh.ici_fsdp=8")
    _, state, _ = _train(source, jax.devices(), steps=1)
    saved = jax.device_get(state)
    checkpoints = Checkpoints(tmp_path / "checkpoints", source.checkpoint)
    checkpoints.save(1, state, {"split": "train", "shards": {}})
    checkpoints.close()

    if target == "1 device":
        cfg, devices = small_experiment(*MODEL, "mesh.ici_fsdp=1"), jax.devices()[:1]
    else:
        cfg, devices = small_experiment(*MODEL, "mesh.ici_fsdp=2", "mesh.ici_tensor=2"), jax.devices()[:4]
    mdef = model_def(cfg)
    optimizer = optimizer_for(cfg, mdef)
    plan = plan_run(cfg, mdef, optimizer, make_mesh(cfg, devices))
    checkpoints = Checkpoints(tmp_path / "checkpoints", cfg.checkpoint)
    step, restored, _ = checkpoints.restore_latest(abstract_sharded_state(cfg, mdef, optimizer, plan))
    checkpoints.close()
    assert step == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), saved)
    wq = restored["params"]["layers"]["attention"]["query"]["kernel"]
    assert wq.sharding.device_set == set(devices)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["mesh.ici_fsdp=3"], "mesh.ici_fsdp=3.*8 are available"),
        (
            ["mesh.ici_data=8", "mesh.ici_fsdp=1", "train.batch_size=4"],
            "train.batch_size=4.*data x fsdp = 8.*multiple of 8",
        ),
        (
            ["mesh.ici_fsdp=1", "mesh.ici_tensor=8"],
            r"params/layers/attention/\w+/kernel: dimension \d \(heads, size 4\).*tensor = 8 ways",
        ),
        (["mesh.rules=[[batch, [data, pipeline]]]"], "'pipeline': no such mesh axis"),
        (["mesh.rules=[[bacth, [data]]]"], "'bacth'.*batch, length"),
    ],
)
def test_bad_layouts_fail_before_compiling(small_experiment, data_dir, overrides, message):
    cfg = small_experiment(*MODEL, *overrides)
    with pytest.raises(ConfigError, match=message):
        mdef = model_def(cfg)
        plan_run(cfg, mdef, optimizer_for(cfg, mdef), make_mesh(cfg))
