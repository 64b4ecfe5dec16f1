"""Learning-rate schedules and the optax update rule built from an OptimizerConfig."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from meshtrain.trainer.config.schema import OptimizerConfig


def learning_rate_schedule(cfg: OptimizerConfig, train_steps: int) -> optax.Schedule:
    """The schedule by name.

    cosine: linear warmup to the peak, cosine decay to `min_lr_ratio * peak` at `decay_steps`
      (default: the run's last step); the usual GPT/Llama recipe.
    rsqrt: PaLM's (section 5): the peak for `warmup_steps`, then peak * sqrt(warmup_steps / step),
      i.e. a 1/sqrt(step) decay that is continuous where it begins.
    constant: linear warmup, then the peak.
    """
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    if cfg.schedule == "cosine":
        decay_steps = cfg.decay_steps or train_steps
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=max(decay_steps, warmup + 1),
            end_value=peak * cfg.min_lr_ratio,
        )
    if cfg.schedule == "rsqrt":
        hold = max(warmup, 1)
        return lambda step: peak * jnp.sqrt(hold / jnp.maximum(step, hold).astype(jnp.float32))
    if cfg.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(peak)
        return optax.linear_schedule(0.0, peak, warmup)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def decay_mask(logical_axes):
    """Weight decay applies to matrices only: norm scales and biases keep their values.

    A parameter is a matrix when it has at least two axes besides the stacked `layers` axis.
    """
    return jax.tree.map(
        lambda names: sum(name != "layers" for name in names) >= 2, logical_axes, is_leaf=lambda x: isinstance(x, tuple)
    )


def make_optimizer(cfg: OptimizerConfig, train_steps: int, logical_axes) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW or PaLM's Adafactor.

    PaLM's Adafactor (section 5) is unfactored (so, Adam with parameter scaling), with momentum
    beta1 and second-moment decay 1 - step^-0.8; its own update clipping is off because the global
    gradient norm is clipped first, as the paper did.
    """
    schedule = learning_rate_schedule(cfg, train_steps)
    mask = decay_mask(logical_axes)
    if cfg.name == "adamw":
        update = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask)
    elif cfg.name == "adafactor":
        update = optax.adafactor(
            schedule,
            decay_rate=cfg.adafactor_decay_rate,
            factored=False,
            multiply_by_parameter_scale=True,
            clipping_threshold=None,
            momentum=cfg.b1,
            weight_decay_rate=cfg.weight_decay or None,
            weight_decay_mask=mask,
        )
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}")
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), update)
    return update
