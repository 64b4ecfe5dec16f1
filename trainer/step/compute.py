"""One optimizer step and one eval step, as pure functions of (state, batch) for jax.jit.

Gradient accumulation scans over microbatches inside the step, so a step is one compiled program
whatever the accumulation count; the loss is weighted by tokens across microbatches, so splitting a
batch does not change what is optimized.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from meshtrain.model.loss import cross_entropy_loss
from meshtrain.trainer.step.guard import SpikeRule, judge, keep_unless
from meshtrain.trainer.step.state import ModelDef

# (logits, targets, weights, z_loss) -> (loss, aux): model.loss.cross_entropy_loss, or a
# vocab-parallel equivalent when the vocabulary is split over devices.
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def _loss_and_aux(mdef: ModelDef, z_loss: float, loss_fn: LossFn, params, batch):
    model = mdef.bind(params)
    logits = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    return loss_fn(logits, batch["targets"], batch["weights"], z_loss)


def _split_microbatches(batch, microbatches: int):
    """[rows, ...] -> [microbatches, rows / microbatches, ...], microbatch m taking rows m, m+k, ...

    Interleaving (rather than cutting the batch into contiguous blocks) keeps every microbatch
    spread over all the devices that share the batch, so accumulation moves no data.
    """
    return jax.tree.map(
        lambda x: x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1), batch
    )


def make_train_step(
    mdef: ModelDef,
    optimizer: optax.GradientTransformation,
    z_loss: float,
    microbatches: Callable[[int], int],
    rule: SpikeRule,
    loss_fn: LossFn = cross_entropy_loss,
):
    """A function (state, batch) -> (state, metrics); the caller jits it and donates the state.

    `microbatches(rows)` is how many microbatches a batch of that many rows accumulates over
    (trainer/config/batch_schedule.py): the count is fixed per compiled batch shape.

    A step the spike guard (trainer/step/guard.py) judges bad leaves parameters and optimizer
    state as they were; the step counter still advances (it counts batches trained through)."""

    def token_weighted_loss(params, micro):
        loss, aux = _loss_and_aux(mdef, z_loss, loss_fn, params, micro)
        return loss * aux["tokens"], aux

    grad_fn = jax.value_and_grad(token_weighted_loss, has_aux=True)

    def train_step(state, batch):
        params = state["params"]
        rows = batch["inputs"].shape[0]

        def accumulate(carry, micro):
            grads_sum, loss_sum, ce_sum, tokens = carry
            (weighted_loss, aux), grads = grad_fn(params, micro)
            return (
                jax.tree.map(jnp.add, grads_sum, grads),
                loss_sum + weighted_loss,
                ce_sum + aux["ce"] * aux["tokens"],
                tokens + aux["tokens"],
            ), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        init = (zeros, jnp.float32(0), jnp.float32(0), jnp.float32(0))
        (grads, loss_sum, ce_sum, tokens), _ = jax.lax.scan(
            accumulate, init, _split_microbatches(batch, microbatches(rows))
        )
        denominator = jnp.maximum(tokens, 1.0)
        grads = jax.tree.map(lambda g, p: (g / denominator).astype(p.dtype), grads, params)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        loss, grad_norm = loss_sum / denominator, optax.tree.norm(grads)
        healthy, guard, flags = judge(rule, state["guard"], state["step"], loss, grad_norm)
        new_state = {
            "step": state["step"] + 1,
            "params": keep_unless(healthy, optax.apply_updates(params, updates), params),
            "opt_state": keep_unless(healthy, opt_state, state["opt_state"]),
            "rng": state["rng"],
            "guard": guard,
        }
        metrics = {"loss": loss, "ce": ce_sum / denominator, "tokens": tokens, "grad_norm": grad_norm, **flags}
        return new_state, metrics

    return train_step


def make_eval_step(mdef: ModelDef, z_loss: float, loss_fn: LossFn = cross_entropy_loss):
    """A function (params, batch) -> (summed cross-entropy, tokens), to average over eval batches."""

    def eval_step(params, batch):
        _, aux = _loss_and_aux(mdef, z_loss, loss_fn, params, batch)
        return aux["ce"] * aux["tokens"], aux["tokens"]

    return eval_step
