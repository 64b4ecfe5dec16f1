"""Training and caching the sentencepiece tokenizers meshtrain makes, which round-trip text exactly.

Exactness (decode(encode(x)) == x) matters because a language model trained on a lossy
tokenization can never produce the lost text: whitespace runs, tabs, newlines and leading spaces
are code's structure. So: identity normalization, no dummy prefix, no whitespace stripping,
byte fallback (any character is representable), whitespace-only pieces allowed.

Special ids: pad 0, eos 1 (ends every document), unk 2 (unreachable thanks to byte fallback),
no bos. The model has at most `vocab_size` pieces: `hard_vocab_limit=False` lets a small corpus
yield fewer, so an embedding table of `vocab_size` rows always covers it.
"""

import hashlib
import io
import os
from collections.abc import Iterable, Iterator

import sentencepiece as spm

from meshtrain.trainer.config.schema import DataConfig
from meshtrain.trainer.data.mixture import sources_of
from meshtrain.trainer.data.sources import data_dir, dataset_key, open_split
from meshtrain.trainer.data.tokenizer_kinds import Tokenizer, load_tokenizer
from meshtrain.trainer.errors import DataError
from meshtrain.trainer.storage.atomic import write_atomic
from meshtrain.trainer.storage.paths import absolute, as_path

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
# Training reads at most this many characters of the split (its first documents; TFDS stores a
# split in a hashed, effectively random order): piece statistics settle long before that, and
# training time and memory grow with the input.
MAX_TRAINING_CHARS = 20_000_000
# Documents are fed in slices of at most this many characters: sentencepiece skips any
# "sentence" longer than max_sentence_length, and a whole book would be one.
_TRAINING_SLICE_CHARS = 16_384


def _training_slices(texts: Iterable[str]) -> Iterator[str]:
    """The texts cut into slices of bounded length, stopping after MAX_TRAINING_CHARS."""
    total = 0
    for text in texts:
        for start in range(0, len(text), _TRAINING_SLICE_CHARS):
            piece = text[start : start + _TRAINING_SLICE_CHARS]
            yield piece
            total += len(piece)
            if total >= MAX_TRAINING_CHARS:
                return


def train_tokenizer(texts: Iterable[str], vocab_size: int, output_path: str) -> str:
    """Trains an exact-round-trip unigram model on texts and writes it atomically to output_path.

    The model is built in memory and written through a temp file + rename, so a killed run
    never leaves a half-written .model that a later run would take as a cache hit.
    """
    if vocab_size < 300:
        raise DataError(
            f"tokenizer vocab_size {vocab_size} is too small: byte fallback alone "
            "needs 259 pieces; use at least 300 (e.g. 1024)"
        )
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_slices(texts),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="unigram",
            character_coverage=0.9995,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            byte_fallback=True,
            hard_vocab_limit=False,
            max_sentence_length=4 * _TRAINING_SLICE_CHARS,
            input_sentence_size=1_000_000,
            shuffle_input_sentence=True,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(f"could not train a tokenizer for {output_path}: {e}") from e
    output = absolute(output_path, "tokenizer")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, model.getvalue())
    return os.fspath(output)


def _mixture_key(cfg: DataConfig) -> str:
    """dataset_key of the data: its one dataset's, or for a mixture a hash of its sources and weights."""
    sources = sources_of(cfg)
    if not cfg.mixture:
        return dataset_key(sources[0].data)
    parts = "\0".join(f"{dataset_key(s.data)}:{s.data.train_split}:{s.weight!r}" for s in sources)
    return "mixture-" + hashlib.sha256(parts.encode()).hexdigest()[:16]


def training_texts(cfg: DataConfig) -> Iterator[str]:
    """The documents a tokenizer for this data is trained on: each source's train split, drawn so
    that each source's share of the characters follows its weight (a source with weight 0 gives
    none); what _training_slices reads of it stops at MAX_TRAINING_CHARS."""
    sources = [s for s in sources_of(cfg) if s.weight > 0]
    splits = [open_split(s.data, s.data.train_split) for s in sources]
    taken, next_doc = [0] * len(sources), [0] * len(sources)
    while True:
        open_ = [k for k, split in enumerate(splits) if next_doc[k] < len(split)]
        if not open_:
            return
        k = min(open_, key=lambda k: taken[k] / sources[k].weight)
        text = splits[k][next_doc[k]]
        next_doc[k] += 1
        taken[k] += len(text)
        yield text


def tokenizer_path(cfg: DataConfig, vocab_size: int) -> str:
    """Where tokenizer_for caches the tokenizer it trains for this data and vocab size."""
    return os.fspath(as_path(data_dir(cfg)) / "tokenizers" / f"{_mixture_key(cfg)}-{vocab_size}.model")


def tokenizer_for(cfg: DataConfig, vocab_size: int) -> Tokenizer:
    """cfg.tokenizer if set; else the cached one for this data, trained on its train split(s)."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    path = tokenizer_path(cfg, vocab_size)
    if not as_path(path).is_file():
        train_tokenizer(training_texts(cfg), vocab_size, path)
    return load_tokenizer(path)


def padding_note(pieces: int, vocab_size: int, multiple: int = 128) -> str | None:
    """One line when a tokenizer has fewer pieces than model.vocab_size asked for: sentencepiece
    stops short on a small corpus (hard_vocab_limit=False), and the embedding then keeps unused
    rows. Says how many, and the smallest vocab_size that holds the pieces padded to `multiple`
    (a multiple of 128 keeps the embedding and logits evenly shardable over a tensor axis)."""
    if pieces >= vocab_size:
        return None
    fitted = -(-pieces // multiple) * multiple
    return (
        f"the tokenizer has {pieces} pieces, fewer than model.vocab_size={vocab_size} asked for (the corpus "
        f"does not hold more): the embedding keeps {vocab_size - pieces} unused rows; model.vocab_size={fitted} "
        f"holds the {pieces} pieces padded to a multiple of {multiple}"
    )
