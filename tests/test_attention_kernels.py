"""The fused attention kernels (model/attention_kernels.py) against dot_product_attention.

Splash (TPU) and Pallas flash attention (GPU) run here in Pallas interpret mode: the kernels'
own programs, executed on the CPU. On packed rows of several documents and padding, for
multi-head, grouped and multi-query attention, each equals dot_product_attention in value and
in the gradients of q, k and v, and so does the training path's causal_attention (by blocks of
queries); under a mesh (batch, heads and sequence split, the kernel run per shard) it equals
itself unsharded. `auto` resolves to each platform's kernel.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from meshtrain.model import attention, axes
from meshtrain.model.attention import attention_mask, causal_attention, dot_product_attention
from meshtrain.model.attention_kernels import attention_kernel, fused_attention
from meshtrain.model.decoder import Decoder
from meshtrain.sharding.layout import MeshLayout
from meshtrain.sharding.mesh import MeshShape, build_mesh
from meshtrain.trainer.config import model_preset

BATCH, LENGTH, HEADS, HEAD_DIM = 2, 256, 4, 32
# float32 throughout; the kernels accumulate blockwise (online softmax), so not bitwise.
VALUE_ATOL, GRAD_ATOL = 1e-5, 5e-5
RULES = [
    ("batch", ["data", "fsdp"]),
    ("length", ["sequence"]),
    ("heads", ["tensor"]),
    ("kv_heads", []),
    ("kv", []),
]


def packed_rows(kv_heads: int, seed: int = 0):
    """q, k, v and segment ids of 2 rows: 3 and 2 documents of uneven lengths, then padding."""
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (BATCH, LENGTH, HEADS, HEAD_DIM))
    k = jax.random.normal(keys[1], (BATCH, LENGTH, kv_heads, HEAD_DIM))
    v = jax.random.normal(keys[2], (BATCH, LENGTH, kv_heads, HEAD_DIM))
    rows = [np.repeat([1, 2, 3, 0], [100, 61, 75, 20]), np.repeat([1, 2, 0], [130, 120, 6])]
    return q, k, v, jnp.asarray(np.stack(rows), jnp.int32)


def dense(q, k, v, segment_ids):
    return dot_product_attention(q, k, v, attention_mask(segment_ids))


def value_and_grads(attend, q, k, v, segment_ids):
    """The attention output and the gradients of sum(out * cotangent) in q, k and v."""
    cotangent = jax.random.normal(jax.random.key(7), q.shape)
    loss = lambda q, k, v: jnp.sum(attend(q, k, v, segment_ids) * cotangent)
    return jax.jit(attend)(q, k, v, segment_ids), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_causal_blocks_of_queries_equal_one_block_in_values_and_gradients(kv_heads, monkeypatch):
    """The training path's dot_product, by blocks of queries that skip the keys after them."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", 64)  # 4 blocks; documents run across their edges
    q, k, v, segment_ids = packed_rows(kv_heads)
    expected, expected_grads = value_and_grads(dense, q, k, v, segment_ids)
    blocked = lambda q, k, v, s: causal_attention(q, k, v, attention_mask(s))
    out, grads = value_and_grads(blocked, q, k, v, segment_ids)
    np.testing.assert_allclose(out, expected, atol=VALUE_ATOL)
    for name, grad, want in zip("qkv", grads, expected_grads):
        np.testing.assert_allclose(grad, want, atol=GRAD_ATOL, err_msg=f"d{name}")


@pytest.mark.parametrize("kernel", ["splash", "flash_gpu"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_kernel_equals_dot_product_in_values_and_gradients(kernel, kv_heads):
    q, k, v, segment_ids = packed_rows(kv_heads)
    expected, expected_grads = value_and_grads(dense, q, k, v, segment_ids)
    fused = lambda q, k, v, s: fused_attention(kernel, q, k, v, s)
    out, grads = value_and_grads(fused, q, k, v, segment_ids)
    np.testing.assert_allclose(out, expected, atol=VALUE_ATOL)
    for name, grad, want in zip("qkv", grads, expected_grads):
        np.testing.assert_allclose(grad, want, atol=GRAD_ATOL, err_msg=f"d{name}")
    # Not vacuous: attending across documents would change the output.
    assert not np.allclose(dense(q, k, v, jnp.ones_like(segment_ids)), expected, atol=1e-3)


@pytest.mark.parametrize("kernel", ["splash", "flash_gpu"])
@pytest.mark.parametrize(
    "mesh_sizes, kv_heads",
    [({"data": 2, "sequence": 2, "tensor": 2}, 1), ({"fsdp": 2, "tensor": 4}, 2)],
    ids=["data2-seq2-tensor2-mqa", "fsdp2-tensor4-gqa"],
)
def test_kernel_per_shard_under_a_mesh_equals_it_unsharded(kernel, mesh_sizes, kv_heads):
    """The kernel runs per shard: rows split over data/fsdp, query heads over tensor (each shard
    with the key/value heads of its queries: more shards than kv heads here), sequence gathered."""
    q, k, v, segment_ids = packed_rows(kv_heads, seed=1)
    fused = lambda q, k, v, s: fused_attention(kernel, q, k, v, s)
    expected, expected_grads = value_and_grads(fused, q, k, v, segment_ids)
    layout = MeshLayout(build_mesh(MeshShape(ici=mesh_sizes, dcn={})), RULES, collective_matmul=False)

    def sharded(q, k, v, s):
        with axes.use_layout(layout):
            return fused(q, k, v, s)

    with axes.use_layout(layout):
        assert axes.split_ways(axes.HEADS) == mesh_sizes["tensor"]
    out, grads = value_and_grads(sharded, q, k, v, segment_ids)
    np.testing.assert_allclose(out, expected, atol=VALUE_ATOL)
    for name, grad, want in zip("qkv", grads, expected_grads):
        np.testing.assert_allclose(grad, want, atol=GRAD_ATOL, err_msg=f"d{name}")


def test_auto_picks_each_platforms_kernel_and_an_explicit_choice_stands():
    auto = [attention_kernel("auto", p, 2048) for p in ("tpu", "gpu", "cpu")]
    assert auto == ["splash", "flash_gpu", "dot_product"]
    assert attention_kernel("dot_product", "tpu", 2048) == "dot_product"
    assert attention_kernel("splash", "cpu", 2048) == "splash"


@pytest.mark.parametrize("kernel", ["dot_product", "splash", "flash_gpu"])
def test_changing_one_document_leaves_the_others_logits_unchanged(kernel):
    """Through the whole decoder, at 128-token rows (splash's smallest tile)."""
    cfg = model_preset("tiny", vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=8, d_ff=64, dtype="float32", attention=kernel)  # fmt: skip
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    lengths = [50, 40, 30, 8]  # three documents, then padding
    segments = jnp.asarray(np.repeat([1, 2, 3, 0], lengths)[None], jnp.int32)
    positions = jnp.asarray(np.concatenate([np.arange(n) for n in lengths])[None], jnp.int32)
    tokens = jax.random.randint(jax.random.key(3), (1, 128), 0, cfg.vocab_size)
    forward = nnx.jit(lambda model, tokens: model(tokens, positions, segments))
    logits = forward(model, tokens)
    middle = slice(50, 90)
    changed = forward(model, tokens.at[:, middle].set((tokens[:, middle] + 1) % cfg.vocab_size))
    for doc in (slice(0, 50), slice(90, 120)):
        np.testing.assert_allclose(changed[:, doc], logits[:, doc], atol=1e-6)
    assert not np.allclose(changed[:, middle], logits[:, middle], atol=1e-3)
    if kernel != "dot_product":  # and the fused kernel's logits are dot_product's
        dense = Decoder(dataclasses.replace(cfg, attention="dot_product"), rngs=nnx.Rngs(0))
        np.testing.assert_allclose(forward(dense, tokens), logits, atol=1e-4)


def test_a_fused_kernel_the_length_does_not_suit_is_one_clear_error():
    assert attention_kernel("auto", "tpu", 96) == "dot_product"  # auto falls back
    with pytest.raises(
        ValueError, match=r"model.attention=splash: sequences of 96 tokens; splash needs a multiple of 128"
    ):
        attention_kernel("splash", "tpu", 96)


@pytest.mark.parametrize("kernel", ["splash", "flash_gpu"])
def test_decoder_gradients_through_scanned_rematerialized_layers_equal_dot_products(kernel):
    """The training path: layers scanned, each rematerialized, the loss's gradients in every parameter."""
    cfg = model_preset("tiny", vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=1,
                       head_dim=8, d_ff=64, dtype="float32", remat="full", attention=kernel)  # fmt: skip
    segments = jnp.asarray(np.repeat([1, 2, 0], [70, 50, 8])[None].repeat(2, 0), jnp.int32)
    positions = jnp.asarray(np.concatenate([np.arange(70), np.arange(50), np.zeros(8, int)])[None].repeat(2, 0))
    tokens = jax.random.randint(jax.random.key(5), (2, 128), 0, cfg.vocab_size)

    def loss_and_grads(cfg):
        model = Decoder(cfg, rngs=nnx.Rngs(0))
        loss = lambda model: jnp.mean(model(tokens, positions, segments) ** 2)
        return nnx.jit(lambda model: nnx.value_and_grad(loss)(model))(model)

    loss, grads = loss_and_grads(cfg)
    dense_loss, dense_grads = loss_and_grads(dataclasses.replace(cfg, attention="dot_product"))
    np.testing.assert_allclose(loss, dense_loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(dense_grads)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
