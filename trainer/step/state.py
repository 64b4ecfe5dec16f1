"""The train state as a plain pytree, and the model it is the state of.

The state is a dict (step, params, opt_state, rng, guard) of arrays, not an NNX object: that is what jit
donates, what Orbax writes, and what restores onto any mesh. Parameters are kept as NNX's "pure
dict" (nested dicts of arrays keyed by module path), a stable layout that converters can read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax
from flax import nnx

from meshtrain.model.axes import logical_axes
from meshtrain.model.decoder import Decoder
from meshtrain.model.params import abstract_decoder
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.step.guard import init_guard
from meshtrain.trainer.step.optimizer import make_optimizer


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """Everything static about the model: how to rebuild it from params, and its axis names."""

    graphdef: Any
    axes: Any  # pure-dict pytree of logical axis-name tuples, one per parameter
    abstract_params: Any  # nnx.State of the parameters' ShapeDtypeStructs (nothing allocated)

    def bind(self, params) -> Decoder:
        """The NNX model whose parameters are `params` (a pure dict); cheap, used inside jit."""
        return nnx.merge(self.graphdef, params)


def model_def(cfg: ExperimentConfig) -> ModelDef:
    """The model of `cfg`, built abstractly (shapes only)."""
    graphdef, abstract_params = nnx.split(abstract_decoder(cfg.model), nnx.Param)
    return ModelDef(graphdef, nnx.to_pure_dict(logical_axes(abstract_params)), abstract_params)


def optimizer_for(cfg: ExperimentConfig, mdef: ModelDef) -> optax.GradientTransformation:
    return make_optimizer(cfg.optimizer, cfg.train.steps, mdef.axes)


def init_state(cfg: ExperimentConfig, mdef: ModelDef, optimizer: optax.GradientTransformation, params=None):
    """A fresh state at step 0 with zeroed optimizer moments: around `params` (weights to start
    from, e.g. `checkpoint.init_from`) or parameters initialized from the experiment seed."""
    init_key, rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    if params is None:
        model = Decoder(cfg.model, rngs=nnx.Rngs(params=init_key))
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {
        "step": jax.numpy.zeros((), jax.numpy.int32),
        "params": params,
        "opt_state": optimizer.init(params),
        "rng": rng,
        "guard": init_guard(),
    }


def abstract_state(cfg: ExperimentConfig, mdef: ModelDef, optimizer: optax.GradientTransformation):
    """Shapes and dtypes of the state, with no allocation: the restore target for checkpoints."""
    return jax.eval_shape(lambda: init_state(cfg, mdef, optimizer))
