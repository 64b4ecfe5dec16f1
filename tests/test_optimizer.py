"""Schedules and update rules against their published definitions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.config.batch_schedule import batch_size_at, tokens_through
from meshtrain.trainer.step.optimizer import decay_mask, learning_rate_schedule, make_optimizer


def optimizer_cfg(*overrides):
    return load_experiment(None, list(overrides)).optimizer


def test_rsqrt_is_palms_schedule():
    """PaLM section 5: 1e-2 for the first 10k steps, then decayed as 1/sqrt(step)."""
    schedule = learning_rate_schedule(load_experiment("palm-540b-v4-6144").optimizer, 255_000)
    for step in (0, 1, 5_000, 10_000):
        assert float(schedule(step)) == pytest.approx(1e-2)
    for step in (40_000, 100_000, 250_000):
        assert float(schedule(step)) == pytest.approx(1e-2 * (10_000 / step) ** 0.5, rel=1e-6)


def test_cosine_warms_up_linearly_and_ends_at_the_floor():
    cfg = optimizer_cfg(
        "optimizer.learning_rate=1e-3",
        "optimizer.warmup_steps=10",
        "optimizer.min_lr_ratio=0.1",
        "optimizer.schedule=cosine",
    )
    schedule = learning_rate_schedule(cfg, train_steps=110)
    assert float(schedule(5)) == pytest.approx(0.5e-3)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(60)) == pytest.approx(0.55e-3, rel=1e-4)  # halfway down the cosine
    assert float(schedule(110)) == pytest.approx(1e-4)


def test_weight_decay_spares_norms_and_biases_even_when_stacked():
    axes = {
        "norm": ("layers", "embed"),
        "kernel": ("layers", "embed", "mlp"),
        "embedding": ("vocab", "embed"),
        "bias": ("mlp",),
    }
    assert decay_mask(axes) == {"norm": False, "kernel": True, "embedding": True, "bias": False}


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_optimizers_descend_and_clip(name):
    cfg = optimizer_cfg(
        f"optimizer.name={name}",
        "optimizer.schedule=constant",
        "optimizer.warmup_steps=0",
        "optimizer.learning_rate=0.05",
        "optimizer.grad_clip=1.0",
        "optimizer.weight_decay=0.0",
    )
    params = {"w": jnp.full((4, 4), 2.0), "b": jnp.ones((4,))}
    axes = {"w": ("embed", "mlp"), "b": ("mlp",)}
    optimizer = make_optimizer(cfg, 100, axes)
    loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)
    state = optimizer.init(params)
    start = loss(params)
    for _ in range(20):
        updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        params = jax.tree.map(jnp.add, params, updates)
    assert loss(params) < 0.7 * start


def test_gradient_clipping_acts_on_the_global_norm_before_the_update():
    """clip_norm=0.5 then AdamW must equal AdamW fed gradients rescaled to global norm 0.5 by hand."""
    common = [
        "optimizer.name=adamw",
        "optimizer.schedule=constant",
        "optimizer.warmup_steps=0",
        "optimizer.learning_rate=0.1",
        "optimizer.weight_decay=0.0",
    ]
    axes = {"w": ("embed", "mlp"), "b": ("mlp",)}
    clipped = make_optimizer(optimizer_cfg(*common, "optimizer.grad_clip=0.5"), 10, axes)
    unclipped = make_optimizer(optimizer_cfg(*common, "optimizer.grad_clip=0"), 10, axes)
    params = {"w": jnp.zeros((3, 3)), "b": jnp.zeros((3,))}
    gradients = [
        {"w": jnp.full((3, 3), 100.0), "b": jnp.full((3,), -50.0)},
        {"w": jnp.full((3, 3), 0.01), "b": jnp.full((3,), 0.02)},
    ]

    def by_hand(g):
        norm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g)))
        return jax.tree.map(lambda x: x * jnp.minimum(1.0, 0.5 / norm), g)

    state_a, state_b = clipped.init(params), unclipped.init(params)
    for g in gradients:
        updates_a, state_a = clipped.update(g, state_a, params)
        updates_b, state_b = unclipped.update(by_hand(g), state_b, params)
        for a, b in zip(jax.tree.leaves(updates_a), jax.tree.leaves(updates_b)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)
    raw_state = unclipped.init(params)
    for g in gradients:
        raw_updates, raw_state = unclipped.update(g, raw_state, params)
    assert not np.allclose(np.asarray(raw_updates["w"]), np.asarray(updates_a["w"]), rtol=1e-3)


def test_batch_ramp_and_token_count_follow_palm():
    train = load_experiment("palm-540b-v4-6144").train
    assert [batch_size_at(train, s) for s in (0, 49_999, 50_000, 114_999, 115_000, 254_999)] == [
        512,
        512,
        1024,
        1024,
        2048,
        2048,
    ]
    tokens = tokens_through(train, 2048, train.steps)
    assert tokens == 2048 * (50_000 * 512 + 65_000 * 1024 + 140_000 * 2048)
    # The paper trained on 780B tokens; its ramp over 255k steps gives 776B.
    assert tokens == pytest.approx(780e9, rel=0.01)
