"""Text in, packed token rows out: TFDS builders, tokenizers, mixtures, the grain pipeline.

prepare_dataset(cfg)                       build a built-in dataset, or check a TFDS name
open_split(cfg, split) -> TextSource       len() and [i] -> str
sources_of(cfg) -> (Source, ...)           the mixture's sources (or data.dataset alone)
tokenizer_for(cfg, vocab_size)             cfg.tokenizer, or one trained and cached in data_dir
load_tokenizer(path) -> Tokenizer          a sentencepiece .model or a Hugging Face tokenizer.json
BatchStream(cfg, tokenizer, seed, split, num_shards=...)  next_batch(num_rows, step), get/set_state()
merge_states(per_feeder_states)            the global data state of a multi-process run
"""

from meshtrain.trainer.data.mixture import Source, sources_of
from meshtrain.trainer.data.pipeline import FEATURES, PROVENANCE, BatchStream, merge_states
from meshtrain.trainer.data.sources import open_split, prepare_dataset
from meshtrain.trainer.data.tokenizer import EOS_ID, PAD_ID, tokenizer_for, train_tokenizer
from meshtrain.trainer.data.tokenizer_kinds import Tokenizer, load_tokenizer

__all__ = [
    "FEATURES",
    "PROVENANCE",
    "BatchStream",
    "Source",
    "merge_states",
    "open_split",
    "prepare_dataset",
    "sources_of",
    "EOS_ID",
    "PAD_ID",
    "Tokenizer",
    "load_tokenizer",
    "tokenizer_for",
    "train_tokenizer",
]
