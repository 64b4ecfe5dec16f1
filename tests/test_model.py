"""The decoder's contract: published parameter counts, packed-row isolation, causality, layouts that
must agree (scan/unrolled, remat policies, grouped/repeated heads), the GPT-NeoX options (partial
rotary, two-norm parallel block, exact GELU), cached decoding equal to the full forward pass, named
parameters, dtypes, training."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from meshtrain.model import axes
from meshtrain.model.config import model_config_errors
from meshtrain.model.decoder import Decoder
from meshtrain.model.generate import greedy_generate
from meshtrain.model.kv_cache import init_cache
from meshtrain.model.layers import Mlp
from meshtrain.model.loss import cross_entropy_loss
from meshtrain.model.params import count_params
from meshtrain.model.rope import apply_rope
from meshtrain.trainer.config import model_preset

# Small enough to compile in a second on a CPU, large enough to have groups, layers and a vocab.
SMALL = dict(
    vocab_size=64,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    d_ff=64,
    max_seq_len=32,
    dtype="float32",
    z_loss=1e-4,
)
VARIANTS = {
    "palm": dict(),
    "mqa": dict(num_kv_heads=1),
    "mha": dict(num_kv_heads=4),
    "llama": dict(block="sequential", tie_embeddings=False, num_kv_heads=4),
    "gpt3": dict(block="sequential", mlp="gelu", norm="layernorm", positions="learned", use_bias=True),
    "neox": dict(
        block="parallel_two_norms",
        mlp="gelu_exact",
        norm="layernorm",
        rope_fraction=0.25,
        use_bias=True,
        tie_embeddings=False,
        num_kv_heads=4,
    ),
}
LENGTH = 16


@nnx.jit
def run(model, tokens, positions, segment_ids):
    """One compiled forward per config and shape; eager op-by-op dispatch would dominate test time."""
    return model(tokens, positions, segment_ids)


def small(**overrides):
    return model_preset("tiny", **{**SMALL, **overrides})


def inputs(batch=2, seed=0):
    tokens = jax.random.randint(jax.random.key(seed), (batch, LENGTH), 0, SMALL["vocab_size"])
    positions = jnp.tile(jnp.arange(LENGTH), (batch, 1))
    return tokens, positions, jnp.ones((batch, LENGTH), jnp.int32)


# --- parameter counts ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset, billions", [("palm-8b", 8.63), ("palm-62b", 62.50), ("palm-540b", 540.35)])
def test_palm_counts_match_table_1(preset, billions):
    count = count_params(model_preset(preset))
    # PaLM's Table 1 leaves out the norm scales (2.2M at 540B, enough to round 540.354 up to .36).
    assert round((count.total - count.norm) / 1e9, 2) == billions


def test_llama2_7b_count():
    assert round(count_params(model_preset("llama2-7b")).total / 1e9, 2) == 6.74


def test_gpt3_175b_count():
    assert abs(count_params(model_preset("gpt3-175b")).total / 175e9 - 1) < 0.005


@pytest.mark.parametrize("variant", ["palm", "llama", "gpt3", "neox"])
def test_count_equals_instantiated_model(variant):
    cfg = small(**VARIANTS[variant])
    params = nnx.state(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    real = sum(x.size for x in jax.tree.leaves(params))
    count = count_params(cfg)
    assert count.total == real
    assert count.embedding == cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2) + (
        cfg.max_seq_len * cfg.d_model if cfg.positions == "learned" else 0
    )
    norms_per_layer = 1 if cfg.block == "parallel" else 2
    assert count.norm == (cfg.num_layers * norms_per_layer + 1) * cfg.d_model * (2 if cfg.use_bias else 1)


# --- packed rows and causality ------------------------------------------------------------------


@pytest.mark.parametrize(
    "block, attention",
    [
        ("parallel", "dot_product"),
        ("sequential", "dot_product"),
        ("parallel", "flash_gpu"),
        ("sequential", "flash_gpu"),
    ],
)
def test_packed_documents_do_not_see_each_other(block, attention):
    """Also with the GPU kernel, in Pallas interpret mode (splash needs 128-token rows: its own test)."""
    model = Decoder(small(block=block, attention=attention), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (1, LENGTH), 0, SMALL["vocab_size"])
    # Doc 1 at 0..8, doc 2 at 9..13 (positions restart at 0), then 2 padding tokens.
    segments = jnp.array([[1] * 9 + [2] * 5 + [0] * 2])
    positions = jnp.array([list(range(9)) + list(range(5)) + [0, 0]])
    doc1, doc2 = slice(0, 9), slice(9, 14)
    logits = run(model, tokens, positions, segments)
    assert np.isfinite(logits).all()  # padding rows included

    other_doc2 = tokens.at[:, doc2].set((tokens[:, doc2] + 1) % SMALL["vocab_size"])
    np.testing.assert_array_equal(run(model, other_doc2, positions, segments)[:, doc1], logits[:, doc1])
    other_doc1 = tokens.at[:, doc1].set((tokens[:, doc1] + 1) % SMALL["vocab_size"])
    changed = run(model, other_doc1, positions, segments)
    np.testing.assert_allclose(changed[:, doc2], logits[:, doc2], atol=1e-6)
    # Not vacuous: in one segment the same change does reach the later tokens.
    one_segment = jnp.ones_like(segments)
    assert not np.allclose(
        run(model, other_doc1, positions, one_segment)[:, doc2],
        run(model, tokens, positions, one_segment)[:, doc2],
        atol=1e-6,
    )
    # Doc 2 packed behind doc 1 computes exactly what it computes alone (at the start of a row,
    # padding after it: a row as long as the kernel's tiles).
    pad = LENGTH - 5
    alone = run(
        model,
        jnp.pad(tokens[:, doc2], ((0, 0), (0, pad))),
        jnp.pad(positions[:, doc2], ((0, 0), (0, pad))),
        jnp.array([[1] * 5 + [0] * pad]),
    )
    np.testing.assert_allclose(logits[:, doc2], alone[:, :5], atol=1e-5)


def test_later_tokens_do_not_change_earlier_logits():
    model = Decoder(small(), rngs=nnx.Rngs(0))
    tokens, positions, segments = inputs()
    logits = run(model, tokens, positions, segments)
    changed = run(model, tokens.at[:, 10].set((tokens[:, 10] + 1) % SMALL["vocab_size"]), positions, segments)
    np.testing.assert_array_equal(changed[:, :10], logits[:, :10])
    assert not np.allclose(changed[:, 10:], logits[:, 10:])


# --- layouts that must agree --------------------------------------------------------------------


def test_scan_and_unrolled_layers_agree():
    scanned = Decoder(small(scan_layers=True), rngs=nnx.Rngs(0))
    unrolled = Decoder(small(scan_layers=False), rngs=nnx.Rngs(0))
    shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))
    assert shapes(scanned) == shapes(unrolled)
    np.testing.assert_allclose(run(unrolled, *inputs()), run(scanned, *inputs()), atol=1e-5)


def loss_and_grads(cfg):
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    tokens, positions, segments = inputs()

    def loss_fn(params):
        logits = nnx.merge(graphdef, params)(tokens, positions, segments)
        return cross_entropy_loss(logits[:, :-1], tokens[:, 1:], segments[:, 1:], cfg.z_loss)[0]

    return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_remat_policies_change_nothing_but_memory(scan_layers):
    loss, grads = loss_and_grads(small(remat="none", scan_layers=scan_layers))
    for policy in ("full", "save_dots"):
        other_loss, other_grads = loss_and_grads(small(remat=policy, scan_layers=scan_layers))
        np.testing.assert_allclose(other_loss, loss, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), other_grads, grads)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_attention_equals_heads_repeated(kv_heads):
    """Query head h reads key/value head h // group (Hugging Face's repeat_kv), so repeating each
    key/value head group times must turn the model into an equivalent multi-head one."""
    grouped = Decoder(small(num_kv_heads=kv_heads), rngs=nnx.Rngs(0))
    multi_head = Decoder(small(num_kv_heads=SMALL["num_heads"]), rngs=nnx.Rngs(0))
    group = SMALL["num_heads"] // kv_heads
    params = nnx.state(grouped, nnx.Param)
    attention = params["layers"]["attention"]
    for name in ("key", "value"):
        attention[name]["kernel"].set_value(jnp.repeat(attention[name]["kernel"][...], group, axis=2))
    nnx.update(multi_head, params)
    np.testing.assert_allclose(run(multi_head, *inputs()), run(grouped, *inputs()), atol=1e-5)


@pytest.mark.parametrize("rotary_dims", [8, 2])
def test_rope_scores_depend_on_relative_position_only(rotary_dims):
    """Whole heads (Llama) or only the leading rotary_dims (GPT-NeoX's partial rotary): the rotated
    part makes q.k depend on m - n alone, and the rest of each head passes through untouched."""
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 8))
    rope = lambda x, m: apply_rope(x, jnp.array([[m]]), 1e4, rotary_dims)
    score = lambda m, n: jnp.sum(rope(q, m)[..., :rotary_dims] * rope(k, n)[..., :rotary_dims])
    np.testing.assert_allclose(score(7, 3), score(107, 103), rtol=1e-4)
    assert not np.isclose(score(7, 3), score(7, 4))
    np.testing.assert_array_equal(rope(q, 7)[..., rotary_dims:], q[..., rotary_dims:])
    # GPT-NeoX spaces the frequencies over the rotated dimensions, not over head_dim: the rotated part
    # is a whole-head rotation of a head rotary_dims wide.
    np.testing.assert_allclose(
        rope(q, 7)[..., :rotary_dims], apply_rope(q[..., :rotary_dims], jnp.array([[7]]), 1e4), rtol=1e-6
    )


def test_rope_fraction_validation():
    base = small(head_dim=8)
    assert model_config_errors(base) == []
    assert model_config_errors(dataclasses.replace(base, rope_fraction=0.25)) == []  # 2 dimensions
    for bad in (0.0, 1.5, 0.1, 0.375):  # out of (0, 1]; rotates 0 dimensions; rotates 3
        assert [key for key, _, _ in model_config_errors(dataclasses.replace(base, rope_fraction=bad))] == [
            "rope_fraction"
        ], bad
    assert model_config_errors(dataclasses.replace(base, rope_fraction=0.1, positions="learned")) == []
    assert [e[0] for e in model_config_errors(dataclasses.replace(base, head_dim=9))] == ["head_dim"]


def test_parallel_two_norms_is_parallel_with_a_separate_mlp_norm():
    """x + attn(pre_norm(x)) + mlp(mlp_norm(x)): with mlp_norm equal to pre_norm it is PaLM's block."""
    cfg = small(norm="layernorm", use_bias=True)
    two_norms = Decoder(dataclasses.replace(cfg, block="parallel_two_norms"), rngs=nnx.Rngs(0))
    one_norm = Decoder(cfg, rngs=nnx.Rngs(0))
    params = nnx.state(two_norms, nnx.Param)
    assert set(params["layers"]) == {"pre_norm", "attention", "mlp_norm", "mlp"}
    nnx.update(one_norm, nnx.filter_state(params, lambda path, _: "mlp_norm" not in path))
    tokens, positions, segments = inputs()
    norms = params["layers"]
    for name in ("scale", "bias"):
        norms["mlp_norm"][name].set_value(jax.random.normal(jax.random.key(1), norms["mlp_norm"][name].shape))
    nnx.update(two_norms, params)
    assert not np.allclose(
        run(two_norms, tokens, positions, segments), run(one_norm, tokens, positions, segments), atol=1e-3
    )
    for name in ("scale", "bias"):
        norms["mlp_norm"][name].set_value(norms["pre_norm"][name][...])
    nnx.update(two_norms, params)
    np.testing.assert_allclose(
        run(two_norms, tokens, positions, segments), run(one_norm, tokens, positions, segments), atol=1e-6
    )


def test_gelu_exact_is_the_erf_gelu():
    """gelu_exact is Hugging Face's "gelu" (erf); gelu stays the tanh approximation ("gelu_new")."""
    exact = Mlp(small(mlp="gelu_exact", init_std=0.5), rngs=nnx.Rngs(0))
    tanh = Mlp(small(mlp="gelu", init_std=0.5), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 3, SMALL["d_model"]))
    expected = jax.nn.gelu(x @ exact.wi.kernel[...], approximate=False) @ exact.wo.kernel[...]
    np.testing.assert_allclose(exact(x), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tanh(x), exact(x), rtol=1e-5, atol=1e-6)


# --- cached decoding ----------------------------------------------------------------------------

DECODE_CASES = {
    "sequential-gqa": dict(block="sequential", num_kv_heads=2),
    "parallel": dict(num_kv_heads=1),
    "neox": VARIANTS["neox"],
    "learned-unrolled": dict(positions="learned", scan_layers=False, remat="full"),
}


@nnx.jit
def decode(model, tokens, positions, cache):
    return model.decode(tokens, positions, cache)


@pytest.mark.parametrize("case", sorted(DECODE_CASES))
def test_prefill_and_decode_steps_equal_the_full_forward(case):
    """Prefill 10 tokens, then decode the other 6 one at a time: every position's logits must be the
    training forward pass's. The cache starts as noise, not zeros, so the test also shows that
    unwritten slots are invisible and written ones are overwritten."""
    # A larger init than training's keeps activations and logits far from zero and tokens distinct.
    model = Decoder(small(init_std=0.3, **DECODE_CASES[case]), rngs=nnx.Rngs(0))
    tokens, positions, segments = inputs()
    full = run(model, tokens, positions, segments)
    cache = init_cache(model.cfg, 2, LENGTH + 4)
    cache = jax.tree.map(lambda a: jax.random.normal(jax.random.key(2), a.shape, a.dtype), cache)
    logits, cache = decode(model, tokens[:, :10], positions[:, :10], cache)
    steps = [logits]
    for t in range(10, LENGTH):
        logits, cache = decode(model, tokens[:, t : t + 1], positions[:, t : t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)
    assert cache.keys.shape == (SMALL["num_layers"], 2, LENGTH + 4, model.cfg.num_kv_heads, SMALL["head_dim"])


@pytest.mark.parametrize("case", ["parallel", "neox"])
def test_greedy_generate_equals_rerunning_the_forward_pass(case):
    model = Decoder(small(init_std=0.3, **DECODE_CASES[case]), rngs=nnx.Rngs(0))
    prompt = inputs()[0][:, :5]
    generated = greedy_generate(model, prompt, 6)
    assert generated.shape == (2, 6) and generated.dtype == jnp.int32
    sequence = prompt
    for _ in range(6):
        positions = jnp.tile(jnp.arange(sequence.shape[1]), (2, 1))
        logits = run(model, sequence, positions, jnp.ones_like(sequence))
        sequence = jnp.concatenate([sequence, jnp.argmax(logits[:, -1:], axis=-1).astype(sequence.dtype)], 1)
    np.testing.assert_array_equal(generated, sequence[:, 5:])
    assert len(np.unique(generated)) > 2  # not a degenerate repeat of one token


# --- parameter names, variants, dtypes, training ------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_parameter_has_logical_axis_names(variant):
    params = nnx.state(Decoder(small(**VARIANTS[variant]), rngs=nnx.Rngs(0)), nnx.Param)
    names = dict(nnx.to_flat_state(axes.logical_axes(params)))
    shapes = dict(nnx.to_flat_state(params))
    assert names.keys() == shapes.keys()
    for path, axis_names in names.items():
        assert len(axis_names) == shapes[path].ndim, path
        assert set(axis_names) <= set(axes.ALL), path
        stacked = path[0] == "layers"
        assert (axis_names[0] == axes.LAYERS) == stacked and axis_names.count(axes.LAYERS) == stacked, path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_produce_finite_logits(variant):
    logits = run(Decoder(small(**VARIANTS[variant]), rngs=nnx.Rngs(0)), *inputs())
    assert logits.shape == (2, LENGTH, SMALL["vocab_size"]) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all()


def dot_operand_dtypes(jaxpr):
    """The dtypes of every dot_general operand in a jaxpr, scan and checkpoint bodies included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield from (v.aval.dtype for v in eqn.invars)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from dot_operand_dtypes(sub)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_bfloat16_compute_with_float32_params(tie_embeddings):
    model = Decoder(small(dtype="bfloat16", param_dtype="float32", tie_embeddings=tie_embeddings), rngs=nnx.Rngs(0))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
    logits = run(model, *inputs())
    assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *inputs()).jaxpr
    operand_dtypes = list(dot_operand_dtypes(jaxpr))
    assert len(operand_dtypes) == 2 * 10  # q, k, v, scores, mix, out, 3 in the MLP, logits
    assert set(operand_dtypes) == {jnp.dtype(jnp.bfloat16)}


def test_cross_entropy_and_z_loss():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    targets = jnp.array([[0, 1, 2], [3, 4, 0]])
    weights = jnp.array([[1, 1, 0], [1, 0, 0]])
    loss, aux = cross_entropy_loss(logits, targets, weights, z_loss=0.1)
    log_z = jax.nn.logsumexp(logits, -1)
    ce = log_z - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    mask = weights.astype(bool)
    np.testing.assert_allclose(aux["ce"], ce[mask].mean(), rtol=1e-6)
    np.testing.assert_allclose(aux["z_loss"], 0.1 * (log_z[mask] ** 2).mean(), rtol=1e-6)
    np.testing.assert_allclose(loss, aux["ce"] + aux["z_loss"], rtol=1e-6)
    assert aux["tokens"] == 3
    assert cross_entropy_loss(logits, targets, jnp.zeros_like(weights), 0.1)[0] == 0.0


def test_tiny_model_trains():
    cfg = small()
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    tokens, positions, segments = inputs(batch=4)
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params)(tokens, positions, segments)
            return cross_entropy_loss(logits[:, :-1], tokens[:, 1:], segments[:, 1:], cfg.z_loss)[1]["ce"]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    losses = []
    for _ in range(15):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert abs(losses[0] - math.log(cfg.vocab_size)) < 0.2  # the init starts near uniform predictions
    assert losses[-1] < losses[0] - 1.0
