"""Checkpoint checksums (trainer/run/checksums.py): the definition, independence from the mesh, what
they catch, and that summing a sharded state gathers nothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from meshtrain.trainer.run.checksums import array_checksums, lower_checksums


def reference_pair(x: np.ndarray) -> list[int]:
    """The definition, in numpy: plain = sum(w_i), weighted = sum((i + 1) w_i) mod 2**32 over the
    array's raw bits as unsigned words (bool as one byte) at row-major flat index i."""
    x = np.asarray(x)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    words = x.reshape(-1).view(f"u{x.dtype.itemsize}").astype(np.uint64)
    index = np.arange(1, words.size + 1, dtype=np.uint64)
    return [int(words.sum() % 2**32), int((words * index % 2**32).sum() % 2**32)]


def arrays() -> dict[str, jax.Array]:
    """Every kind the state holds, in shapes that take both summing paths (a last axis grouped by 32
    or not) and the shapes of scanned layers."""
    key = jax.random.key(0)
    return {
        "f32_grouped": jax.random.normal(key, (16, 8, 96)),
        "f32_ragged": jax.random.normal(key, (37, 5, 11)),
        "bf16": jax.random.normal(key, (24, 320), jnp.bfloat16),
        "int32": jnp.arange(-50, 950, dtype=jnp.int32).reshape(10, 100),
        "uint8": jnp.arange(2048, dtype=jnp.uint8).reshape(32, 64),
        "bool": jnp.arange(70) % 3 == 0,
        "scalar": jnp.float32(3.5),
        "long_1d": jax.random.normal(key, (4096,)),
        "layers_4d": jax.random.normal(key, (2, 8, 4, 64)),
    }


def test_checksums_equal_their_definition_for_every_dtype_and_shape():
    got = array_checksums(arrays())
    assert got == {name: reference_pair(x) for name, x in arrays().items()}


@pytest.mark.parametrize(
    "spec",
    [P("data"), P(None, "data"), P(None, None, "data"), P("data", "model"), P(None, "model", "data")],
    ids=str,
)
def test_checksums_are_the_same_whichever_mesh_holds_the_array(spec):
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    x = jax.random.normal(jax.random.key(1), (16, 8, 96))
    placed = jax.device_put(x, NamedSharding(mesh, spec))
    assert array_checksums({"x": placed}) == array_checksums({"x": x})


def test_one_changed_word_or_two_swapped_words_change_the_checksum():
    x = np.asarray(jax.random.normal(jax.random.key(2), (64, 96)))
    before = array_checksums({"x": x})["x"]
    flipped = x.copy()
    flipped.view(np.uint32)[5, 7] ^= 1  # the lowest mantissa bit of one element
    swapped = x.copy()
    swapped[3, 2], swapped[40, 90] = x[40, 90], x[3, 2]
    assert array_checksums({"x": flipped})["x"][0] != before[0]
    assert array_checksums({"x": swapped})["x"][0] == before[0]  # the plain sum cannot see a swap...
    assert array_checksums({"x": swapped})["x"][1] != before[1]  # ...the weighted one does


def test_summing_a_sharded_state_gathers_no_array_onto_a_device():
    """Each device sums its own shards: the program's temporaries stay a small fraction of one
    device's share of the state, whatever axis splits each array (an array split along an inner
    axis was once gathered whole onto every device by flattening it)."""
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("fsdp", "tensor"))
    shapes = {  # (shape, spec): the layouts of scanned weights, embeddings and norms
        "qkv": ((4, 256, 8, 64), P(None, "fsdp", "tensor")),
        "mlp_out": ((4, 1024, 288), P(None, "tensor", "fsdp")),  # 72 per device along the last axis
        "embed": ((2048, 256), P("tensor", "fsdp")),
        "norm": ((4, 256), P(None, "fsdp")),
    }
    state = {
        name: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, spec))
        for name, (shape, spec) in shapes.items()
    }
    per_device = sum(np.prod(shape) * 4 for shape, _ in shapes.values()) / 8
    memory = lower_checksums(state).compile().memory_analysis()
    assert memory.temp_size_in_bytes < per_device / 8, (memory.temp_size_in_bytes, per_device)
