"""The shard_map collectives equal the plain computations, in value and gradient, on several meshes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from meshtrain.model.loss import cross_entropy_loss
from meshtrain.sharding.collectives import (
    ring_matmul_applicable,
    ring_reduce_scatter_matmul,
    vocab_parallel_cross_entropy,
)
from meshtrain.sharding.mesh import MeshShape, build_mesh
from meshtrain.sharding.rules import partition_spec
from meshtrain.trainer.config import load_experiment

# The shipped rules: mesh.rules of configs/base.yaml, their one home.
DEFAULT_RULES = load_experiment(None, []).mesh.rules

# Vocab and mlp over sequence x tensor: a split over two mesh axes, with length left whole.
WIDE_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", ()),
    ("vocab", ("sequence", "tensor")),
    ("mlp", ("sequence", "tensor")),
    ("embed", ("fsdp",)),
)

LAYOUTS = {
    "tensor8": ({"tensor": 8}, DEFAULT_RULES),
    "fsdp4-tensor2": ({"fsdp": 4, "tensor": 2}, DEFAULT_RULES),
    "data2-fsdp2-tensor2": ({"data": 2, "fsdp": 2, "tensor": 2}, DEFAULT_RULES),
    "sequence2-tensor4": ({"sequence": 2, "tensor": 4}, DEFAULT_RULES),
    "fsdp8": ({"fsdp": 8}, DEFAULT_RULES),
    "vocab-over-sequence-and-tensor": ({"sequence": 2, "tensor": 4}, WIDE_RULES),
}
B, L, V, F, E = 8, 16, 64, 32, 16
Z_LOSS = 1e-2


@pytest.fixture(params=list(LAYOUTS), scope="module")
def layout(request):
    ici, rules = LAYOUTS[request.param]
    return build_mesh(MeshShape(ici=ici, dcn={})), rules


def place(x, names, mesh, rules):
    return jax.device_put(x, NamedSharding(mesh, partition_spec(names, rules)))


def assert_close(actual, expected, rtol=1e-5):
    """Equal within rtol of the largest magnitude of `expected` (elementwise rtol fails near 0)."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert actual.shape == expected.shape
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    assert float(np.max(np.abs(actual - expected))) <= rtol * scale, (actual, expected)


def loss_inputs(all_padding=False):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    logits = 4.0 * jax.random.normal(k1, (B, L, V), jnp.float32)
    logits = logits + 30.0 * jax.random.bernoulli(k3, 0.1, (B, L, 1))  # some large log Z
    # 7 is prime to V, so the B*L >= V targets hit every vocab id, hence every vocab shard.
    targets = (jnp.arange(B * L, dtype=jnp.int32) * 7 % V).reshape(B, L)
    assert len(np.unique(np.asarray(targets))) == V
    weights = jax.random.bernoulli(k2, 0.7, (B, L)).astype(jnp.float32)
    if all_padding:
        weights = jnp.zeros_like(weights)
    assert all_padding or 0 < float(weights.sum()) < B * L
    return logits, targets, weights


def compiled(fn, *args):
    """fn jitted and compiled for args, so one compilation serves both the call and its HLO text."""
    return jax.jit(fn).lower(*args).compile()


def test_vocab_parallel_cross_entropy_equals_plain(layout):
    mesh, rules = layout
    logits, targets, weights = loss_inputs()
    args = (
        place(logits, ("batch", "length", "vocab"), mesh, rules),
        place(targets, ("batch", "length"), mesh, rules),
        place(weights, ("batch", "length"), mesh, rules),
    )

    def parallel(logits, targets, weights):
        return vocab_parallel_cross_entropy(logits, targets, weights, Z_LOSS, mesh=mesh, rules=rules)

    forward = compiled(parallel, *args)
    loss, aux = forward(*args)
    plain_loss, plain_aux = cross_entropy_loss(logits, targets, weights, Z_LOSS)
    assert set(aux) == set(plain_aux) == {"ce", "z_loss", "tokens"}
    for got, want in [(loss, plain_loss)] + [(aux[k], plain_aux[k]) for k in plain_aux]:
        assert got.dtype == jnp.float32 and got.shape == ()
        assert_close(got, want)

    backward = compiled(jax.grad(lambda *a: parallel(*a)[0]), *args)
    plain_grad = jax.grad(lambda x: cross_entropy_loss(x, targets, weights, Z_LOSS)[0])(logits)
    assert_close(backward(*args), plain_grad)

    # The logits are never gathered over vocab, forward or backward: no all-gather at all.
    for fn in (forward, backward):
        assert "all-gather" not in fn.as_text()


def test_vocab_parallel_cross_entropy_all_padding_is_zero():
    mesh = build_mesh(MeshShape(ici={"fsdp": 2, "tensor": 4}, dcn={}))
    logits, targets, weights = loss_inputs(all_padding=True)
    loss, aux = jax.jit(lambda *a: vocab_parallel_cross_entropy(*a, Z_LOSS, mesh=mesh, rules=DEFAULT_RULES))(
        logits, targets, weights
    )
    assert float(loss) == float(aux["ce"]) == float(aux["z_loss"]) == float(aux["tokens"]) == 0.0


def test_ring_matmul_equals_plain(layout):
    mesh, rules = layout
    k1, k2 = jax.random.split(jax.random.key(1))
    h = jax.random.normal(k1, (B, L, F), jnp.float32)
    kernel = jax.random.normal(k2, (F, E), jnp.float32)
    tp = mesh.shape["tensor"] * (mesh.shape["sequence"] if rules is WIDE_RULES else 1)
    assert ring_matmul_applicable(h.shape, mesh, rules) == (tp > 1)
    if tp == 1:
        with pytest.raises(ValueError, match="length chunks"):
            ring_reduce_scatter_matmul(h, kernel, mesh=mesh, rules=rules)
        return
    args = (place(h, ("batch", "length", "mlp"), mesh, rules), place(kernel, ("mlp", "embed"), mesh, rules))

    def ring(h, kernel):
        return ring_reduce_scatter_matmul(h, kernel, mesh=mesh, rules=rules)

    def plain(h, kernel):
        return jnp.einsum("blf,fe->ble", h, kernel)

    forward = compiled(ring, *args)
    y = forward(*args)
    assert y.dtype == jnp.float32
    assert_close(y, plain(h, kernel))

    grads = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(ring(*a))), argnums=(0, 1)))(*args)
    plain_grads = jax.grad(lambda *a: jnp.sum(jnp.sin(plain(*a))), argnums=(0, 1))(h, kernel)
    for got, want in zip(grads, plain_grads):
        assert_close(got, want)

    assert "collective-permute" in forward.as_text()  # a ring, not an all-reduce


def test_ring_matmul_keeps_dtype_and_refuses_uneven_chunks():
    mesh = build_mesh(MeshShape(ici={"fsdp": 2, "tensor": 4}, dcn={}))
    h = jax.random.normal(jax.random.key(2), (4, 8, F), jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(3), (F, E), jnp.bfloat16)
    y = jax.jit(lambda a, b: ring_reduce_scatter_matmul(a, b, mesh=mesh, rules=DEFAULT_RULES))(h, kernel)
    plain = jnp.einsum("blf,fe->ble", h, kernel)
    assert y.dtype == plain.dtype == jnp.bfloat16
    assert_close(y, plain, rtol=2e-2)

    for shape in [(4, 6, F), (4, 8, 6), (3, 8, F)]:  # length 6 or mlp 6 not in 4; batch 3 not in 2
        assert not ring_matmul_applicable(shape, mesh, DEFAULT_RULES)
    with pytest.raises(ValueError, match="length chunks"):
        ring_reduce_scatter_matmul(jnp.zeros((4, 6, F)), kernel, mesh=mesh, rules=DEFAULT_RULES)
