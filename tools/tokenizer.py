"""`meshtrain tokenizer` (also `python -m meshtrain.tools tokenizer`): train a sentencepiece model on a dataset.

Takes an experiment like `meshtrain train` does and trains on its dataset's train split with
`model.vocab_size` pieces. Without --output the model goes where training looks for it (the cache
in data.data_dir), so a later `meshtrain train` of the same experiment uses it.
"""

from __future__ import annotations

import argparse
import sys

from meshtrain.tools.args import (
    add_experiment_arguments,
    command_main,
    experiment_from_args,
    quiet_libraries,
)
from meshtrain.trainer.data import load_tokenizer, prepare_dataset, sources_of, train_tokenizer
from meshtrain.trainer.data.tokenizer import padding_note, tokenizer_path, training_texts


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="meshtrain tokenizer", description=__doc__)
    add_experiment_arguments(parser)
    parser.add_argument("--output", help="where to write the .model (default: the experiment's tokenizer cache)")
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = experiment_from_args(args)
    quiet_libraries()
    prepare_dataset(cfg.data)
    output = args.output or tokenizer_path(cfg.data, cfg.model.vocab_size)
    train_tokenizer(training_texts(cfg.data), cfg.model.vocab_size, output)
    tokenizer = load_tokenizer(output)
    sample = next(training_texts(cfg.data))  # the first document trained on
    ids = tokenizer.encode(sample)
    names = ", ".join(repr(s.name) for s in sources_of(cfg.data))
    print(
        f"{output}: {tokenizer.size} pieces, trained on {names}; "
        f"{len(sample) / max(len(ids), 1):.2f} characters per token on the first document, round trip "
        f"{'exact' if tokenizer.decode(ids) == sample else 'NOT exact'}"
    )
    note = padding_note(tokenizer.size, cfg.model.vocab_size)
    if note:
        print(f"meshtrain: {note}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
