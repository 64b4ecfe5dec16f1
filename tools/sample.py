"""`meshtrain sample RUN_OR_CHECKPOINT --prompt "..."` (also `python -m meshtrain.tools sample`): greedy text
from a trained run or a converted checkpoint, decoded with a KV cache (model/generate.py).

The prompt is encoded with the tokenizer the checkpoint carries (the one a run trained with, or the
tokenizer.model / tokenizer.json a conversion copied), or the one --tokenizer names; never another
one that happens to have the right size. It is encoded as transformers' `tokenizer(prompt)` would:
BOS first where the tokenizer adds one. The output ends at the tokenizer's EOS, as transformers' generate() does (the
compiled program runs all --max-new-tokens steps; what follows the EOS is dropped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax.numpy as jnp

from meshtrain.model.generate import greedy_generate
from meshtrain.tools.args import command_main, quiet_libraries
from meshtrain.trainer.data.tokenizer_kinds import load_tokenizer
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.run.saved_weights import carried_tokenizer, find_checkpoint, load_decoder


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="meshtrain sample", description=__doc__)
    parser.add_argument(
        "checkpoint",
        metavar="RUN_OR_CHECKPOINT",
        help="a run directory, a `meshtrain convert` output, or a step directory",
    )
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text to continue")
    prompt.add_argument("--prompt-ids", help="token ids to continue, comma-separated (no tokenizer needed)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    parser.add_argument("--tokenizer", help="a sentencepiece .model or a tokenizer.json (default: the checkpoint's)")
    parser.add_argument("--no-bos", action="store_true", help="encode the prompt without special tokens (no BOS)")
    parser.add_argument("--json", action="store_true", help="print ids, text and speed as JSON")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens={args.max_new_tokens} must be at least 1")
    saved = find_checkpoint(args.checkpoint, args.step)
    if getattr(args, "args", None):
        raise UserError(f"meshtrain sample takes no key=value overrides (got {' '.join(args.args)})")
    model_cfg = saved.config.model
    tokenizer_file = args.tokenizer or carried_tokenizer(saved)
    tokenizer = load_tokenizer(tokenizer_file) if tokenizer_file else None
    if tokenizer is not None and tokenizer.size > model_cfg.vocab_size:
        raise UserError(
            f"tokenizer {tokenizer.path} has {tokenizer.size} ids but the model's vocabulary has "
            f"{model_cfg.vocab_size}: it is not the model's tokenizer"
        )
    if args.prompt_ids is not None:
        prompt_ids = _parse_ids(args.prompt_ids, model_cfg.vocab_size)
    else:
        if tokenizer is None:
            raise UserError(
                f"{saved.directory} carries no tokenizer to encode --prompt with: pass "
                f"--tokenizer (the .model or tokenizer.json the weights were trained with), or --prompt-ids"
            )
        prompt_ids = tokenizer.encode_prompt(args.prompt, specials=not args.no_bos)
    if not prompt_ids:
        raise UserError("the prompt is empty: generation needs at least one token to continue")
    if len(prompt_ids) + args.max_new_tokens > model_cfg.max_seq_len:
        room = max(model_cfg.max_seq_len - len(prompt_ids), 0)
        raise UserError(
            f"{len(prompt_ids)} prompt tokens + --max-new-tokens {args.max_new_tokens} exceed "
            f"model.max_seq_len={model_cfg.max_seq_len}, the longest sequence the model was built for (and the "
            f"length of its key/value cache): use --max-new-tokens {room} or less"
        )

    model = load_decoder(saved)
    started = time.perf_counter()
    generated = [int(t) for t in greedy_generate(model, jnp.asarray([prompt_ids]), args.max_new_tokens)[0]]
    seconds = time.perf_counter() - started
    eos = tokenizer.eos_id if tokenizer is not None else None
    if eos is not None and eos in generated:
        generated = generated[: generated.index(eos) + 1]
    text = tokenizer.decode(generated) if tokenizer is not None else None
    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint": str(saved.step_dir),
                    "prompt_ids": prompt_ids,
                    "generated_ids": generated,
                    "text": text,
                    "seconds_including_compilation": round(seconds, 3),
                }
            )
        )
    else:
        print((args.prompt or "") + (text if text is not None else " ".join(map(str, generated))))
        print(f"[{len(generated)} tokens in {seconds:.2f} s, including compilation; {saved.step_dir}]", file=sys.stderr)
    return 0


def _parse_ids(text: str, vocab_size: int) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"--prompt-ids {text!r}: expected comma-separated integers") from None
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise UserError(f"--prompt-ids: {bad} outside the vocabulary [0, {vocab_size})")
    return ids


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
