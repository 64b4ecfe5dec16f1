"""The spike guard: inside the compiled step, decide whether this step's update may be applied.

PaLM (Chowdhery et al. 2022, section 5.1) saw about 20 loss spikes and handled each by hand. Here a
step is *bad* when its loss or gradient norm is not finite, or when its loss is a spike: above
mean + factor * std of the last `window` healthy losses (and above the mean by `min_jump` of it, so a
flat, nearly noiseless window does not flag ordinary wobble). A bad step applies no update:
parameters and optimizer state (and so the schedule's count) stay as they were, and its loss does
not enter the window. That is decided on the device with the step's own values, so guarding costs
no host sync; the host reads the counters when it syncs anyway (log, eval and checkpoint steps).

A run of `max_consecutive` bad steps latches `tripped_at`, the step at which the streak reached that
length; the training loop answers it by rewinding to an earlier checkpoint and skipping data
(trainer/run/recovery.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from meshtrain.trainer.config.schema import SPIKE_WINDOW_SLOTS, SpikeConfig


@dataclasses.dataclass(frozen=True)
class SpikeRule:
    """The compiled step's part of SpikeConfig (the rest is the host's recovery policy)."""

    window: int
    factor: float
    min_jump: float
    max_consecutive: int

    @classmethod
    def from_config(cls, cfg: SpikeConfig) -> SpikeRule:
        return cls(cfg.window, cfg.factor, cfg.min_jump, cfg.max_consecutive)


WINDOW_SLOTS = SPIKE_WINDOW_SLOTS  # the ring buffer's fixed size: shapes never depend on spike.window


def init_guard() -> dict:
    """The guard's part of the train state: a ring buffer of healthy losses and the counters."""
    return {
        "losses": jnp.zeros((WINDOW_SLOTS,), jnp.float32),
        "seen": jnp.zeros((), jnp.int32),  # healthy losses recorded so far
        "streak": jnp.zeros((), jnp.int32),  # bad steps in a row, up to this one
        "skipped": jnp.zeros((), jnp.int32),  # bad steps in all (since the last restore)
        "tripped_at": jnp.full((), -1, jnp.int32),  # step at which a streak reached max_consecutive
    }


def judge(rule: SpikeRule, guard: dict, step: jax.Array, loss: jax.Array, grad_norm: jax.Array):
    """(healthy, new guard, flags) for the step numbered `step` with this loss and gradient norm."""
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if rule.window:
        # The last `window` healthy losses: slot i was written (seen - 1 - i) mod slots writes ago.
        age = (guard["seen"] - 1 - jnp.arange(WINDOW_SLOTS)) % WINDOW_SLOTS
        recent = (age < rule.window).astype(jnp.float32)
        mean = jnp.sum(recent * guard["losses"]) / rule.window
        std = jnp.sqrt(jnp.sum(recent * (guard["losses"] - mean) ** 2) / rule.window)
        ready = guard["seen"] >= rule.window
        spike = ready & finite & (loss > mean + rule.factor * std) & (loss > mean * (1.0 + rule.min_jump))
    else:
        spike = jnp.zeros((), bool)
    healthy = finite & ~spike
    slot = guard["seen"] % WINDOW_SLOTS
    losses = jnp.where(healthy, guard["losses"].at[slot].set(loss.astype(jnp.float32)), guard["losses"])
    streak = jnp.where(healthy, 0, guard["streak"] + 1)
    tripped = (guard["tripped_at"] < 0) & (streak >= rule.max_consecutive)
    new_guard = {
        "losses": losses,
        "seen": guard["seen"] + healthy.astype(jnp.int32),
        "streak": streak,
        "skipped": guard["skipped"] + (~healthy).astype(jnp.int32),
        "tripped_at": jnp.where(tripped, step.astype(jnp.int32), guard["tripped_at"]),
    }
    flags = {
        "skipped": (~healthy).astype(jnp.float32),
        "spike": spike.astype(jnp.float32),
        "nonfinite": (~finite).astype(jnp.float32),
        "skipped_steps": new_guard["skipped"],
        "bad_streak": streak,
        "tripped_at": new_guard["tripped_at"],
    }
    return healthy, new_guard, flags


def keep_unless(healthy: jax.Array, new, old):
    """`new` where the step is healthy, else `old`, leaf by leaf (a select XLA fuses into the update)."""
    return jax.tree.map(lambda n, o: jnp.where(healthy, n, o), new, old)
