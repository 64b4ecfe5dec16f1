"""Memory per chip of a training step: parameters, gradients, optimizer state and activations.

What is counted, per chip (bytes):

params      every parameter in model.param_dtype, split as mesh.rules split it: each dimension is
            divided by the product of the mesh axes its logical axis name is given (rounded up).
            Shapes and axis names come from the model itself (abstract evaluation, as
            trainer/step/state.py's model_def), so every architecture option is exact.
grads       float32, split like the parameters: the train step accumulates gradients in a float32
            buffer (trainer/step/compute.py). With more than one microbatch each microbatch's own
            gradients (param_dtype) live beside the accumulator while they are added.
optimizer   what optimizer.init actually stores (jax.eval_shape of it), each moment split like its
            parameter, anything else replicated: AdamW keeps mu and nu (2 x 4 bytes/param in f32);
            PaLM's unfactored Adafactor keeps v and the momentum (the same), plus scalars.
activations what the backward pass of one microbatch needs at its peak (see activation_bytes): the
            residuals saved by the forward pass under the remat policy, plus the larger of the loss's
            working set (logits and their gradient) and one layer's backward working set.
total       the sum. The batch itself, XLA's workspace and fusion temporaries, collectives' buffers
            and the optimizer's elementwise temporaries are not counted: they are small next to the
            rest for any model worth estimating, and the compiler decides them.

The XLA cross-check (tests/test_arithmetic.py) compares params + optimizer with the compiled step's
argument bytes (they agree to the byte, less the batch) and the total with arguments + temporaries
of the CPU compile (from 15% under to 20% over, across remat policies, block kinds and
FSDP/tensor/sequence layouts).
CPU compiles are float32; a bfloat16 compile on CPU is not representative (XLA's CPU backend
upcasts bfloat16 around its matmuls and keeps both copies), so the bfloat16 accounting is the same
model with 2-byte arrays where the code computes in the compute dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from meshtrain.model import axes
from meshtrain.model.axes import logical_axes
from meshtrain.model.config import REMAT_POLICIES, ModelConfig
from meshtrain.model.dtypes import compute_dtype
from meshtrain.model.layers import merges_token_axes
from meshtrain.model.params import abstract_decoder
from meshtrain.sharding.rules import dimension_axes, partition_spec, split_ways
from meshtrain.trainer.config.batch_schedule import accumulates, largest_microbatch
from meshtrain.trainer.config.hardware import hardware_spec
from meshtrain.trainer.config.mesh_shape import mesh_sizes as mesh_sizes_on
from meshtrain.trainer.config.schema import ExperimentConfig, OptimizerConfig
from meshtrain.trainer.step.optimizer import make_optimizer

F32 = 4


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per chip; total = params + grads + optimizer + activations."""

    params: int
    grads: int
    optimizer: int
    activations: int
    total: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def local_shape(
    shape: Sequence[int], names: Sequence[str | None], rules, mesh_sizes: Mapping[str, int]
) -> tuple[int, ...]:
    """The shape of one chip's shard of an array whose dimensions carry logical `names` (None: never
    split), under `rules` and mesh axis sizes `mesh_sizes` (absent axes have size 1)."""
    spec = partition_spec(tuple(names), rules)
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    return tuple(-(-size // split_ways(entry, mesh_sizes)) for size, entry in zip(shape, spec))


def _local_bytes(shape, names, dtype, rules, mesh_sizes) -> int:
    return math.prod(local_shape(shape, names, rules, mesh_sizes)) * jnp.dtype(dtype).itemsize


def compute_dtype_for(cfg: ExperimentConfig) -> jnp.dtype:
    """The compute dtype on the experiment's hardware (model.dtype, `auto` resolved for its platform)."""
    return compute_dtype(cfg.model, hardware_spec(cfg.hardware.kind).platform)


@functools.lru_cache(maxsize=32)
def _abstract_model(model: ModelConfig):
    """(parameters as ShapeDtypeStructs, their logical axis names), both as pure dicts, as
    trainer/step/state.py lays them out; nothing is allocated (PaLM 540B takes a fraction of a second)."""
    state = nnx.state(abstract_decoder(model), nnx.Param)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
    return params, nnx.to_pure_dict(logical_axes(state))


class _Names:
    """A leaf wrapper, so that a tuple of axis names is not taken for a pytree node (names None: an
    optimizer-state leaf that is not shaped like a parameter, replicated)."""

    def __init__(self, names):
        self.names = None if names is None else tuple(names)


@dataclasses.dataclass(frozen=True)
class _Leaf:
    path: tuple[str, ...]
    shape: tuple[int, ...]
    names: tuple[str, ...]
    dtype: jnp.dtype


def _param_leaves(model: ModelConfig) -> list[_Leaf]:
    """Every parameter with its path, shape, logical axis names and dtype."""
    params, names = _abstract_model(model)
    flat_names = dict(jax.tree_util.tree_flatten_with_path(names, is_leaf=lambda x: isinstance(x, tuple))[0])
    return [
        _Leaf(tuple(str(getattr(k, "key", k)) for k in path), leaf.shape, flat_names[path], leaf.dtype)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    ]


@functools.lru_cache(maxsize=32)
def _optimizer_leaves(model: ModelConfig, optimizer_cfg: OptimizerConfig, steps: int) -> tuple[_Leaf, ...]:
    """Every optimizer-state leaf with its shape, logical axis names and dtype. A moment shaped like
    its parameter is split like it (as trainer/step/partition.py's plan_run lays the state out);
    anything else (step counts, Adafactor's (1,)-shaped unfactored placeholders) is replicated (names
    all None). Cached: it is the same for every layout of an experiment, and tracing the optimizer's
    init is most of what one candidate of `meshtrain plan` costs (13 ms of 19 for PaLM 540B)."""
    params, axis_names = _abstract_model(model)
    optimizer = make_optimizer(optimizer_cfg, steps, axis_names)
    opt_state = jax.eval_shape(optimizer.init, params)
    names = jax.tree.map(lambda _, n: _Names(n), params, axis_names)
    opt_names = optax.tree_map_params(
        optimizer,
        lambda leaf, n, param: n if leaf.shape == param.shape else _Names(None),
        opt_state,
        names,
        params,
        transform_non_params=lambda _: _Names(None),
        is_leaf=lambda x: isinstance(x, _Names),
    )
    return tuple(
        _Leaf((), leaf.shape, leaf_names.names if leaf_names.names is not None else (None,) * leaf.ndim, leaf.dtype)
        for leaf, leaf_names in zip(
            jax.tree.leaves(opt_state), jax.tree.leaves(opt_names, is_leaf=lambda x: isinstance(x, _Names)), strict=True
        )
    )


def state_bytes(cfg: ExperimentConfig, mesh_sizes: Mapping[str, int]) -> tuple[int, int, int]:
    """(params, grads, optimizer) bytes per chip; see the module docstring."""
    rules = cfg.mesh.rules
    leaves = _param_leaves(cfg.model)
    param_bytes = sum(_local_bytes(p.shape, p.names, p.dtype, rules, mesh_sizes) for p in leaves)
    grad_bytes = sum(_local_bytes(p.shape, p.names, jnp.float32, rules, mesh_sizes) for p in leaves)
    if accumulates(cfg.train):
        grad_bytes += param_bytes
    opt_bytes = sum(
        _local_bytes(leaf.shape, leaf.names, leaf.dtype, rules, mesh_sizes)
        for leaf in _optimizer_leaves(cfg.model, cfg.optimizer, cfg.train.steps)
    )
    return param_bytes, grad_bytes, opt_bytes


def _gathered_bytes(leaves: list[_Leaf], cfg: ExperimentConfig, mesh_sizes: Mapping[str, int]) -> int:
    """Bytes of `leaves` all-gathered over the batch axes (FSDP) for one use, in the compute dtype
    (the model casts each weight to it before its matmul, and the cast runs on the shard, before
    the gather): each chip then holds them split only over the other axes (tensor). 0 when the
    batch axes split none of them."""
    rules = cfg.mesh.rules
    batch_axes = dimension_axes((axes.BATCH,), rules)[0]
    unsplit = {a: n for a, n in mesh_sizes.items() if a not in batch_axes}
    dtype = compute_dtype_for(cfg)
    resident = sum(_local_bytes(p.shape, p.names, dtype, rules, mesh_sizes) for p in leaves)
    gathered = sum(_local_bytes(p.shape, p.names, dtype, rules, unsplit) for p in leaves)
    return gathered if gathered > resident else 0


@dataclasses.dataclass(frozen=True)
class ActivationSizes:
    """Bytes of the per-chip activation tensors of one microbatch (one layer unless named otherwise)."""

    x: int  # the residual stream [batch, length, embed], compute dtype
    x32: int  # the same in float32 (norms compute in float32)
    q: int  # queries [batch, length, heads, head_dim]
    kv: int  # keys or values [batch, length, kv_heads, head_dim]
    scores: int  # attention scores [batch, heads, length, all keys], float32
    probs: int  # probabilities in the compute dtype for p.v (0 when that is float32: the same array)
    hidden: int  # one MLP hidden [batch, length, mlp]
    stats: int  # a norm's per-token statistic [batch, length], float32
    softmax_stats: int  # the softmax's per-query statistic [batch, heads, length], float32
    logits: int  # [batch, length, vocab], float32


def activation_sizes(cfg: ExperimentConfig, mesh_sizes: Mapping[str, int], rows: int) -> ActivationSizes:
    """Per-chip sizes of the tensors the activation model counts, for `rows` sequences."""
    m, rules = cfg.model, cfg.mesh.rules
    s = cfg.data.seq_len
    dt = compute_dtype_for(cfg)

    def size(shape, names, dtype=dt):
        return _local_bytes(shape, names, dtype, rules, mesh_sizes)

    b_, l_ = axes.BATCH, axes.LENGTH
    scores = size((rows, m.num_heads, s, s), (b_, axes.HEADS, l_, None), jnp.float32)
    return ActivationSizes(
        x=size((rows, s, m.d_model), (b_, l_, axes.EMBED)),
        x32=size((rows, s, m.d_model), (b_, l_, axes.EMBED), jnp.float32),
        q=size((rows, s, m.num_heads, m.head_dim), (b_, l_, axes.HEADS, axes.KV)),
        kv=size((rows, s, m.num_kv_heads, m.head_dim), (b_, l_, axes.KV_HEADS, axes.KV)),
        scores=scores,
        probs=0 if dt.itemsize == F32 else scores * dt.itemsize // F32,
        hidden=size((rows, s, m.d_ff), (b_, l_, axes.MLP)),
        stats=size((rows, s), (b_, l_), jnp.float32),
        softmax_stats=size((rows, m.num_heads, s), (b_, axes.HEADS, l_), jnp.float32),
        logits=size((rows, s, m.vocab_size), (b_, l_, axes.VOCAB), jnp.float32),
    )


def _layer_residuals(model: ModelConfig, a: ActivationSizes) -> int:
    """What the forward pass of one block keeps for its backward pass without remat.

    Measured, not derived: these are the per-layer arrays XLA stacks out of the forward scan for this
    block (after JAX's partial evaluation and XLA's simplification; read off the compiled HLO of
    the train step with jax 0.10), more than the textbook set because JAX keeps float32
    intermediates of the norm and the softmax and several elementwise intermediates of the
    activation function:
    per norm (1 parallel, 2 parallel_two_norms and sequential): 3 float32 copies of x (the input
      upcast, normalized, scaled) and the block input in the compute dtype, and 2 float32 per-token
      statistics;
    attention: rotated q, the attention output, rotated k and v (compute dtype), the probabilities in
      float32 and in the compute dtype (one float32 array when that is float32);
    MLP: 6 arrays of [b, l, d_ff] in the compute dtype (swiglu and gelu alike).
    """
    norms = (1 if model.block == "parallel" else 2) * (3 * a.x32 + a.x + 2 * a.stats)
    attention = 2 * a.q + 2 * a.kv + a.scores + (a.probs or a.scores) + 2 * a.softmax_stats
    return norms + attention + 6 * a.hidden


def _layer_saved(model: ModelConfig, a: ActivationSizes, remat: str) -> int:
    """What the forward pass keeps per layer for the backward pass, under `remat`."""
    if remat == "none":
        return _layer_residuals(model, a)
    if remat == "full":
        return a.x
    # save_dots: the block input and the outputs of the weight matmuls the backward pass reads: q, k,
    # v before rotary, the MLP's up-projections, and (sequential) the attention output projection.
    saved = a.x + a.q + 2 * a.kv + (2 if model.mlp == "swiglu" else 1) * a.hidden
    return saved + (a.x if model.block == "sequential" else 0)


def _merged_token_copies(cfg: ExperimentConfig, mesh_sizes: Mapping[str, int], a: ActivationSizes, remat: str) -> int:
    """Per layer, what the forward scan stacks beside _layer_residuals on CPU without remat.

    There model.layers.project merges the token axes of each matmul's input, and the scan keeps
    the merged copies as well as the unmerged ones: 4 arrays the size of x more per layer,
    measured from the compiled HLO (jax 0.10 and 0.12, parallel and sequential blocks). Under remat
    they are recomputed one layer at a time and not stacked; under sequence parallelism, and on
    TPU and GPU, nothing is merged.
    """
    length_ways = split_ways(partition_spec((axes.LENGTH,), cfg.mesh.rules)[0], mesh_sizes)
    merged = merges_token_axes(hardware_spec(cfg.hardware.kind).platform, length_ways)
    return 4 * a.x if merged and remat == "none" else 0


def _layer_backward_working_set(model: ModelConfig, a: ActivationSizes, remat: str) -> int:
    """Live while one block runs backward, beyond what is saved for the other layers: the recomputed
    residuals (under remat), the residual stream's cotangent in and out, and the largest gradient
    transient: the scores' cotangent, or the MLP hidden cotangents (two for swiglu)."""
    recomputed = _layer_residuals(model, a) - _layer_saved(model, a, remat)
    gradients = 2 * a.x + max(a.scores, (2 if model.mlp == "swiglu" else 1) * a.hidden)
    return recomputed + gradients


def _loss_working_set(a: ActivationSizes) -> int:
    """The logits (float32) and their cotangent, with the final norm's output that produced them."""
    return 2 * a.logits + a.x


def activation_bytes(
    cfg: ExperimentConfig, mesh_sizes: Mapping[str, int], microbatch_rows: int | None = None, remat: str | None = None
) -> int:
    """Peak bytes per chip of one microbatch's forward and backward pass beyond the train state.

    saved x L + embedding output + max(loss working set, one layer's backward working set), where,
    with x = [b, l, d_model] in the compute dtype, b = microbatch rows / (batch axes), l = seq_len /
    (sequence axes), and heads, kv heads, mlp and vocab divided by the axes the rules give them:

    saved, per layer (what the forward scan stacks for the backward pass):
      none       the block's residuals as XLA keeps them (_layer_residuals): per norm 3 float32
                 copies of x, x itself and 2 per-token statistics; rotated q, k, v and the attention
                 output; the probabilities [b, heads, l, seq_len] in float32 (and a compute-dtype
                 copy); 6 x [b, l, d_ff]; on CPU, 4 x more (_merged_token_copies).
      full       the block input x only.
      save_dots  the block input, the q, k, v projections, the MLP up-projections (2 swiglu, 1 gelu),
                 and a sequential block's attention output projection.
    one layer's backward working set: its recomputed residuals (the none set minus what is saved),
      the residual stream's gradient in and out (2 x), and the largest gradient transient: the
      float32 scores' gradient, or the MLP hidden gradients (2 swiglu, 1 gelu); with FSDP, the
      layer's weights gathered over the batch axes in the compute dtype (their gradients are
      reduce-scattered one matrix at a time, and are not counted).
    loss working set: the float32 logits [b, l, vocab] and their gradient, the final norm's output,
      and (FSDP) the output embedding gathered.

    Not modeled: compiler temporaries beyond these (fusion outputs, layout copies, collective
    buffers). The estimate assumes the scheduler honours the remat policy, which the scan over layers
    guarantees; with scan_layers=false XLA may hoist the recomputation and keep more.
    """
    remat = cfg.model.remat if remat is None else remat
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}: one of {', '.join(REMAT_POLICIES)}")
    if microbatch_rows is None:
        microbatch_rows = largest_microbatch(cfg.train)
    a = activation_sizes(cfg, mesh_sizes, microbatch_rows)
    model = cfg.model
    leaves = _param_leaves(model)
    layer_weights = _gathered_bytes([p for p in leaves if p.path[0] == "layers"], cfg, mesh_sizes)
    output_weights = _gathered_bytes(
        [
            p
            for p in leaves
            if p.path[:2] == (("embed", "embedding") if model.tie_embeddings else ("unembed", "kernel"))
        ],
        cfg,
        mesh_sizes,
    )
    layer = _layer_backward_working_set(model, a, remat) + layer_weights // model.num_layers
    loss = _loss_working_set(a) + output_weights
    saved = model.num_layers * (_layer_saved(model, a, remat) + _merged_token_copies(cfg, mesh_sizes, a, remat)) + a.x
    return saved + max(loss, layer)


def memory_per_chip(
    cfg: ExperimentConfig, mesh_sizes: Mapping[str, int], microbatch_rows: int | None = None
) -> MemoryEstimate:
    """Bytes per chip of a training step of `cfg` on a mesh with axis sizes `mesh_sizes` ({"data":
    2, "fsdp": 256, "tensor": 12}; absent axes are 1), under `cfg.mesh.rules` and `cfg.model.remat`.

    microbatch_rows: global rows per microbatch; default the largest microbatch of the schedule
    (train.microbatches or train.microbatch_size). See the module docstring for what each field counts.
    """
    params, grads, optimizer = state_bytes(cfg, mesh_sizes)
    activations = activation_bytes(cfg, mesh_sizes, microbatch_rows)
    return MemoryEstimate(
        params=params,
        grads=grads,
        optimizer=optimizer,
        activations=activations,
        total=params + grads + optimizer + activations,
    )


@functools.lru_cache(maxsize=256)
def memory_on_chips(cfg: ExperimentConfig, chips: int) -> MemoryEstimate:
    """memory_per_chip of cfg with its mesh resolved over `chips` chips (cached: the cost estimate
    and its fit search ask for the same layouts more than once)."""
    return memory_per_chip(cfg, mesh_sizes_on(cfg, chips))
