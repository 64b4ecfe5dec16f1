"""Fused attention kernels for packed rows: the causal, same-document mask is built block by block
from segment ids inside the kernel, never as a [T, T] array, and scores never leave the chip's
fast memory.

    model.attention   kernel                                                   where auto picks it
    dot_product       model/attention.py: float32 scores and a dense mask      CPU
    splash            Pallas splash attention (jax.experimental.pallas.ops.tpu) TPU
    flash_gpu         Pallas flash attention (jax.experimental.pallas.ops.gpu)  GPU

Both fused kernels take segment ids, so packed documents stay apart, and give the same softmax as
dot_product (float32 inside, the tests compare values and gradients). Splash reads grouped and
multi-query keys natively; Pallas GPU flash attention wants one key/value head per query head, so
they are repeated for it. cuDNN through jax.nn.dot_product_attention is not offered: MaxText found
its path silently ignoring segment ids (MaxText issue #4476), and no machine here can prove
otherwise.

On a platform other than its own a kernel runs in Pallas interpret mode: slow, but exactly the
kernel's program, which is how the CPU suite tests both. Under a mesh the kernel runs per shard
(axes.per_shard, a shard_map): batch split as the rules split it, query heads split over their
axes with the key/value heads each shard needs, and the sequence gathered whole.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as gpu_attention
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from meshtrain.model import axes

_AUTO = {"tpu": "splash", "gpu": "flash_gpu"}
_PLATFORM = {"splash": "tpu", "flash_gpu": "gpu"}
# Tile sizes: the largest of these that divides the sequence (MaxText's splash default is 512). Splash
# computes in whole 128-lane tiles, and Triton (under Pallas GPU) wants tiles of at least 16.
_BLOCKS = {"splash": (512, 256, 128), "flash_gpu": (128, 64, 32, 16)}


def attention_kernel(name: str, platform: str, length: int) -> str:
    """model.attention resolved for `platform` and sequences of `length` tokens: auto is the
    platform's fused kernel where the length is a whole number of its tiles, else dot_product.
    An explicit fused kernel the length does not suit is a ValueError naming the sizes."""
    if name == "auto":
        fused = _AUTO.get(platform)
        return fused if fused is not None and _block(length, fused) else "dot_product"
    if name != "dot_product" and not _block(length, name):
        raise ValueError(
            f"model.attention={name}: sequences of {length} tokens; {name} needs a multiple of "
            f"{_BLOCKS[name][-1]} (or model.attention=auto, which falls back to dot_product)"
        )
    return name


def fused_attention(kernel: str, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim)) v over the causal, same-segment pairs, like
    dot_product_attention: q [B, T, H, D], k and v [B, T, Hkv, D], segment_ids [B, T]."""
    interpret = axes.platform() != _PLATFORM[kernel]
    heads, kv_heads = q.shape[2], k.shape[2]
    ways = axes.split_ways(axes.HEADS)
    # Each shard of query heads reads the key/value heads of its queries: with kv heads repeated to
    # lcm(kv_heads, ways), a shard's share of them along the same axis is exactly those.
    repeat = math.lcm(kv_heads, ways) // kv_heads
    if heads % (kv_heads * repeat):
        raise ValueError(f"{heads} query heads do not split {ways} ways with their {kv_heads} key/value heads")
    k, v = (jnp.repeat(x, repeat, axis=2) if repeat > 1 else x for x in (k, v))
    run = functools.partial(_splash if kernel == "splash" else _flash_gpu, interpret=interpret)
    heads_names = (axes.BATCH, None, axes.HEADS, axes.KV)  # None: the kernel needs the whole sequence
    return axes.per_shard(run, (q, k, v, segment_ids), (heads_names,) * 3 + ((axes.BATCH, None),), heads_names)


def _block(length: int, kernel: str) -> int | None:
    """The tile `kernel` uses for sequences of `length`, or None when none divides it."""
    return next((b for b in _BLOCKS[kernel] if length % b == 0), None)


def _splash_kernel(heads: int, length: int, interpret: bool):
    """Built at each trace (its mask tables become constants of the traced program, so a cached
    kernel would leak one trace's constants into another)."""
    block = _block(length, "splash")
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((length, length)) for _ in range(heads)])
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash(q, k, v, segment_ids, *, interpret: bool):
    """Splash wants [heads, T, D] per row and unscaled scores: heads to the front, q pre-scaled."""
    kernel = _splash_kernel(q.shape[2], q.shape[1], interpret)
    q = jnp.swapaxes(q, 1, 2) * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    rows = jax.vmap(lambda q, k, v, s: kernel(q, k, v, splash.SegmentIds(q=s, kv=s)))
    return jnp.swapaxes(rows(q, k, v, segment_ids), 1, 2)


def _flash_gpu(q, k, v, segment_ids, *, interpret: bool):
    """Pallas GPU flash attention, [B, T, H, D] in and out, one key/value head per query head."""
    group = q.shape[2] // k.shape[2]
    k, v = (jnp.repeat(x, group, axis=2) if group > 1 else x for x in (k, v))
    block = _block(q.shape[1], "flash_gpu")
    sizes = gpu_attention.BlockSizes(
        block_q=block, block_k=block, block_q_dkv=block, block_kv_dkv=block, block_q_dq=block, block_kv_dq=block
    )
    scale = 1.0 / math.sqrt(q.shape[-1])
    return gpu_attention.mha(q, k, v, segment_ids, sm_scale=scale, causal=True, block_sizes=sizes, interpret=interpret)
