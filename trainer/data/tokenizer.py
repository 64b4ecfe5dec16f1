"""Training, loading and caching sentencepiece tokenizers that round-trip text exactly.

Exactness (decode(encode(x)) == x) matters because a language model trained on a lossy
tokenization can never produce the lost text: whitespace runs, tabs, newlines and leading spaces
are code's structure. So: identity normalization, no dummy prefix, no whitespace stripping,
byte fallback (any character is representable), whitespace-only pieces allowed.

Special ids: pad 0, eos 1 (ends every document), unk 2 (unreachable thanks to byte fallback),
no bos. The model has at most `vocab_size` pieces: `hard_vocab_limit=False` lets a small corpus
yield fewer, so an embedding table of `vocab_size` rows always covers it.
"""

import io
import os
from collections.abc import Iterable, Iterator

import sentencepiece as spm

from meshtrain.trainer.config.schema import DataConfig
from meshtrain.trainer.data.sources import data_dir, dataset_key, open_split
from meshtrain.trainer.errors import DataError
from meshtrain.trainer.storage.atomic import write_atomic
from meshtrain.trainer.storage.paths import absolute, as_path

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
# sentencepiece turns spaces into U+2581 internally and back on decode, so a literal U+2581 in
# the text would come back as a space; `encode` writes it as its three UTF-8 byte pieces instead.
_META_SPACE = "\u2581"
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


def load_tokenizer(path: str) -> spm.SentencePieceProcessor:
    """Loads a .model file (local or on an object store); a missing or unreadable one is a
    DataError naming it."""
    path = absolute(path, "data.tokenizer")
    if not path.is_file():
        raise DataError(
            f"tokenizer {os.fspath(path)!r} does not exist: set data.tokenizer to a sentencepiece "
            ".model file, or to null to train one on the dataset"
        )
    try:
        return spm.SentencePieceProcessor(model_proto=path.read_bytes())
    except (RuntimeError, OSError) as e:
        raise DataError(f"tokenizer {path!r} is not a sentencepiece model ({e})") from e


def encode(sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    """sp.encode(text), except that a literal U+2581 survives the round trip (see _META_SPACE)."""
    if _META_SPACE not in text:
        return sp.encode(text)
    meta_bytes = [sp.piece_to_id(f"<0x{b:02X}>") for b in _META_SPACE.encode()]
    ids: list[int] = []
    for i, part in enumerate(text.split(_META_SPACE)):
        if i:
            ids.extend(meta_bytes)
        ids.extend(sp.encode(part))
    return ids


def tokenizer_path(cfg: DataConfig, vocab_size: int) -> str:
    """Where tokenizer_for caches the tokenizer it trains for this dataset and vocab size."""
    return os.fspath(as_path(data_dir(cfg)) / "tokenizers" / f"{dataset_key(cfg)}-{vocab_size}.model")


def existing_tokenizer(cfg: DataConfig, vocab_size: int) -> str | None:
    """The tokenizer file a run used (cfg.tokenizer or the cached one), or None; never trains one."""
    path = as_path(cfg.tokenizer or tokenizer_path(cfg, vocab_size), "data.tokenizer")
    return os.fspath(path) if path.is_file() else None


def tokenizer_for(cfg: DataConfig, vocab_size: int) -> spm.SentencePieceProcessor:
    """cfg.tokenizer if set; else the cached one for this dataset, trained on its train split."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    path = tokenizer_path(cfg, vocab_size)
    if not as_path(path).is_file():
        source = open_split(cfg, cfg.train_split)
        train_tokenizer((source[i] for i in range(len(source))), vocab_size, path)
    return load_tokenizer(path)
