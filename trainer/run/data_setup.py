"""The dataset and tokenizer a run trains with, made ready once for all of its processes."""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils

from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.data import Tokenizer, prepare_dataset, tokenizer_for
from meshtrain.trainer.data.tokenizer import padding_note
from meshtrain.trainer.errors import DataError


def _load_tokenizer(cfg: ExperimentConfig):
    tokenizer = tokenizer_for(cfg.data, cfg.model.vocab_size)
    if tokenizer.size > cfg.model.vocab_size:
        raise DataError(
            f"tokenizer {tokenizer.path} has {tokenizer.size} ids but model.vocab_size="
            f"{cfg.model.vocab_size}; raise model.vocab_size or use a smaller tokenizer"
        )
    return tokenizer


def prepare_data(cfg: ExperimentConfig) -> Tokenizer:
    """Process 0 builds the dataset and tokenizer (once, into the shared data_dir); the others
    wait for it, then every process opens them."""
    if jax.process_index() == 0:
        prepare_dataset(cfg.data)
        tokenizer = _load_tokenizer(cfg)
        note = padding_note(tokenizer.size, cfg.model.vocab_size) if cfg.data.tokenizer is None else None
        if note:
            print(f"meshtrain: {note}")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("meshtrain: dataset and tokenizer ready")
        prepare_dataset(cfg.data)
    return _load_tokenizer(cfg)
