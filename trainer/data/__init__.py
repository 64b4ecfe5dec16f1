"""Text in, packed token rows out: TFDS builders, sentencepiece tokenizers, the grain pipeline.

prepare_dataset(cfg)                      build python_docs / local_text, or check a TFDS name
open_split(cfg, split) -> TextSource      len() and [i] -> str
tokenizer_for(cfg, vocab_size)            cfg.tokenizer, or one trained and cached in data_dir
BatchStream(cfg, tokenizer, seed, split)  next_batch(num_rows), get_state(), set_state()
merge_states(per_process_states)          the global data state of a multi-process run
"""

from meshtrain.trainer.data.pipeline import FEATURES, BatchStream, merge_states
from meshtrain.trainer.data.sources import open_split, prepare_dataset
from meshtrain.trainer.data.tokenizer import (
    EOS_ID,
    PAD_ID,
    encode,
    load_tokenizer,
    tokenizer_for,
    train_tokenizer,
)

__all__ = [
    "FEATURES",
    "BatchStream",
    "merge_states",
    "open_split",
    "prepare_dataset",
    "EOS_ID",
    "PAD_ID",
    "encode",
    "load_tokenizer",
    "tokenizer_for",
    "train_tokenizer",
]
