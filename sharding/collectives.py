"""Two tensor-parallel computations written with explicit collectives (`jax.shard_map`).

XLA's automatic partitioner gets both of these right in value, but not always in cost: it may
gather vocab-split logits to take a logsumexp, and it runs a matmul's reduce-scatter only after the
whole matmul. Here each device works on its own shard and the communication is spelled out:

- `vocab_parallel_cross_entropy`: the loss on logits split over vocab, exchanging only per-token
  scalars (max, sum of exp, target logit), never the [batch, length, vocab] logits.
- `ring_reduce_scatter_matmul`: the MLP output projection whose contraction dim (mlp) is split over
  `tensor`, reduced around a ring one length-chunk at a time so each chunk's transfer overlaps the
  next chunk's matmul (Wang et al. 2023, "Overlap communication with dependent computation via
  decomposition"; the collective matmul of the JAX shard_map docs).

Both take the logical axis rules and derive their specs from them, so they work on any mesh and
layout; both are differentiable, their gradients being the collectives' transposes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from meshtrain.sharding.rules import partition_spec, spec_axes, split_ways


def vocab_parallel_cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float, *, mesh: Mesh, rules
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`model.loss.cross_entropy_loss` for logits [batch, length, vocab] split over vocab.

    Same contract and values: (loss, {"ce", "z_loss", "tokens"}), float32 scalars. Each device
    keeps its vocab slice of the logits; the logsumexp is assembled from a `pmax` of local maxima
    and a `psum` of local sums of exp, and the target logit from a `psum` in which only the device
    owning the target's vocab id contributes. That reduces 3 numbers per token over the vocab axes
    where gathering the logits would bring (tp-1)/tp of V floats per token into every device and
    hold a full [batch, length, vocab] copy there; the backward pass likewise stays on the vocab
    slice (softmax - one_hot needs only the replicated log Z). Weighted sums are then `psum`med
    over the batch and length axes, so the result is replicated.

    Every dimension must divide by the mesh axes the rules split it over (batch, length, vocab).
    """
    spec = partition_spec(("batch", "length", "vocab"), rules)
    token_axes = spec_axes(spec[0]) + spec_axes(spec[1])
    vocab_axes = spec_axes(spec[2])
    vocab_shard = logits.shape[-1] // split_ways(spec[2], mesh.shape)

    def psum(x, axes):
        return jax.lax.psum(x, axes) if axes else x

    def local(logits, targets, weights):
        logits = logits.astype(jnp.float32)
        weights = weights.astype(jnp.float32)
        # The max only keeps exp() in range: any value gives the same log Z, so no gradient (and
        # pmax has no differentiation rule: the stop_gradient is what lets jax.grad through).
        peak = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
        if vocab_axes:
            peak = jax.lax.pmax(peak, vocab_axes)
        log_z = jnp.log(psum(jnp.sum(jnp.exp(logits - peak[..., None]), axis=-1), vocab_axes)) + peak
        first = jax.lax.axis_index(vocab_axes) * vocab_shard if vocab_axes else 0
        index = targets.astype(jnp.int32) - first
        mine = (index >= 0) & (index < vocab_shard)
        picked = jnp.take_along_axis(logits, jnp.clip(index, 0, vocab_shard - 1)[..., None], axis=-1)[..., 0]
        target_logits = psum(jnp.where(mine, picked, 0.0), vocab_axes)
        sums = (jnp.sum(weights * (log_z - target_logits)), jnp.sum(weights * jnp.square(log_z)), jnp.sum(weights))
        return tuple(psum(s, token_axes) for s in sums)

    token_spec = P(spec[0], spec[1])
    ce_sum, z_sum, tokens = jax.shard_map(
        local, mesh=mesh, in_specs=(spec, token_spec, token_spec), out_specs=(P(), P(), P())
    )(logits, targets, weights)
    denominator = jnp.maximum(tokens, 1.0)
    ce = ce_sum / denominator
    z_term = z_loss * z_sum / denominator
    return ce + z_term, {"ce": ce, "z_loss": z_term, "tokens": tokens}


def ring_matmul_applicable(h_shape: tuple[int, ...], mesh: Mesh, rules) -> bool:
    """Whether `ring_reduce_scatter_matmul` can run h of this shape [batch, length, mlp].

    It needs mlp split over more than one device (else there is nothing to reduce), every dim
    dividing by its mesh axes, and each device's length dividing into one chunk per ring member.
    Otherwise use the plain einsum.
    """
    spec = partition_spec(("batch", "length", "mlp"), rules)
    ways = [split_ways(entry, mesh.shape) for entry in spec]
    ring = ways[2]
    return ring > 1 and all(size % w == 0 for size, w in zip(h_shape, ways)) and (h_shape[1] // ways[1]) % ring == 0


def ring_reduce_scatter_matmul(h: jax.Array, kernel: jax.Array, *, mesh: Mesh, rules) -> jax.Array:
    """`jnp.einsum("blf,fe->ble", h, kernel)` for h [batch, length, mlp] with mlp split over tensor.

    Each device holds partial sums over its mlp slice; the plain way is a full local matmul, then a
    reduce-scatter (or all-reduce) that cannot start until the matmul ends. Here the local length
    is cut into tp chunks and an accumulator goes around the ring of the mlp axes: at each of tp
    steps a device computes one chunk's partial product and adds it to the accumulator just
    received from its neighbour, then passes it on (`ppermute`). The matmul of a step does not
    depend on the transfer in flight, so XLA overlaps them; after tp steps device i holds chunk i
    fully reduced. A tiled `all_gather` along length then returns [batch, length, embed] with
    embed replicated and the same layout as h otherwise.

    The kernel [mlp, embed] enters split over the mlp axes on dim 0 and replicated on embed (XLA
    gathers any fsdp split before entry). Check `ring_matmul_applicable` first. The accumulator
    and result are in h's dtype, like the plain einsum.
    """
    spec = partition_spec(("batch", "length", "mlp"), rules)
    ring_axes = spec_axes(spec[2])
    tp = split_ways(spec[2], mesh.shape)
    if not ring_matmul_applicable(h.shape, mesh, rules):
        raise ValueError(
            f"ring_reduce_scatter_matmul: h {h.shape} laid out {spec} on mesh "
            f"{dict(mesh.shape)} needs mlp split over more than one device and "
            f"each device's length split into {tp} length chunks; use the plain einsum"
        )
    kernel = kernel.astype(h.dtype)

    def local(h, kernel):
        me = jax.lax.axis_index(ring_axes)
        chunk = h.shape[1] // tp

        def partial(step):
            # Device i's accumulator at step s holds chunk (i - s - 1) mod tp, so it ends at chunk i.
            start = ((me - step - 1) % tp) * chunk
            piece = jax.lax.dynamic_slice_in_dim(h, start, chunk, axis=1)
            return jnp.einsum("blf,fe->ble", piece, kernel)

        shift = [(i, (i + 1) % tp) for i in range(tp)]
        acc = partial(0)
        for step in range(1, tp):
            acc = jax.lax.ppermute(acc, ring_axes, shift) + partial(step)
        return jax.lax.all_gather(acc, ring_axes, axis=1, tiled=True, to="invarying")

    return jax.shard_map(local, mesh=mesh, in_specs=(spec, P(spec[2], None)), out_specs=P(spec[0], spec[1], None))(
        h, kernel
    )
