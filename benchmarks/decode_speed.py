"""What the KV cache buys: greedy decoding with it (model/generate.py) against rerunning the forward
pass on the growing sequence, on the same model and prompt.

The baseline is the naive loop a first implementation writes: a jitted full forward pass over a
fixed-length buffer (so it compiles once), run once per new token, taking the argmax at the last
filled position. Both produce the same tokens (asserted). Each is compiled and run once to warm up,
then timed best of --repeats; the ratio is the figure that carries over to other machines.

    python3 benchmarks/decode_speed.py [--prompt 64] [--new 192] [--repeats 3] [key=value ...]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from meshtrain.model.decoder import Decoder
from meshtrain.model.generate import greedy_generate
from meshtrain.trainer.config import load_experiment


def naive_generate(model: Decoder, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
    """Reruns the whole sequence for every token (the O(n^2)-per-token baseline)."""
    total = prompt.shape[1] + new_tokens
    forward = nnx.jit(lambda m, t, p, s: m(t, p, s))
    tokens = np.zeros((prompt.shape[0], total), np.int32)
    tokens[:, : prompt.shape[1]] = prompt
    positions = np.broadcast_to(np.arange(total, dtype=np.int32), tokens.shape)
    segments = np.ones_like(tokens)
    for n in range(prompt.shape[1], total):
        logits = forward(model, tokens, positions, segments)
        tokens[:, n] = np.asarray(jnp.argmax(logits[:, n - 1], axis=-1))
    return tokens[:, prompt.shape[1] :]


def best_time(fn, repeats: int) -> tuple[float, np.ndarray]:
    out = np.asarray(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = np.asarray(jax.block_until_ready(fn()))
        times.append(time.perf_counter() - started)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new", type=int, default=192, help="tokens to generate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="config overrides (default: the default experiment's model)")
    args = parser.parse_args()
    cfg = load_experiment(None, args.overrides)
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    prompt = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (1, args.prompt), dtype=np.int32)

    cached_s, cached = best_time(lambda: greedy_generate(model, jnp.asarray(prompt), args.new), args.repeats)
    naive_s, naive = best_time(lambda: naive_generate(model, prompt, args.new), args.repeats)
    assert np.array_equal(cached, naive), "the KV cache changed the greedy tokens"
    print(
        f"model {cfg.model.name}: d_model {cfg.model.d_model}, {cfg.model.num_layers} layers; prompt "
        f"{args.prompt}, {args.new} new tokens, batch 1, {jax.devices()[0].platform}"
    )
    print(f"{'decoder':<34}{'seconds':>9}{'tokens/s':>10}{'speed-up':>10}")
    for name, seconds in (("rerun forward per token (baseline)", naive_s), ("KV cache (greedy_generate)", cached_s)):
        print(f"{name:<34}{seconds:>9.3f}{args.new / seconds:>10.1f}{naive_s / seconds:>9.1f}x")


if __name__ == "__main__":
    main()
