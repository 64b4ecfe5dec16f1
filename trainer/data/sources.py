"""Turning a DataConfig into a prepared dataset and a random-access source of document texts.

`python_docs` and `local_text` are built here on first use; any other `data.dataset` is a TFDS
name that must already be prepared (as array_record) in `data.data_dir`. Nothing here downloads:
an unprepared name fails at once with the command that would prepare it.
"""

import os

import tensorflow_datasets as tfds
from tensorflow_datasets.core import read_only_builder

from meshtrain.trainer.config.schema import DataConfig
from meshtrain.trainer.data.builders import LocalText, PythonDocs
from meshtrain.trainer.errors import DataError

BUILT_IN = ("python_docs", "local_text")


def data_dir(cfg: DataConfig) -> str:
    """cfg.data_dir with ~ expanded and made absolute (TFDS would take '~' as a folder name)."""
    return os.path.abspath(os.path.expanduser(cfg.data_dir))


def _built_in_builder(cfg: DataConfig) -> tfds.core.DatasetBuilder:
    """The builder for python_docs or local_text, configured (and so keyed) by cfg."""
    if cfg.dataset == "python_docs":
        config = PythonDocs.make_config(cfg.eval_fraction)
        return PythonDocs(config=config, data_dir=data_dir(cfg), file_format="array_record")
    if not cfg.text_dir:
        raise DataError(
            "data.dataset is local_text but data.text_dir is not set: set it to a directory of .txt and/or .jsonl files"
        )
    text_dir = os.path.abspath(os.path.expanduser(cfg.text_dir))
    config = LocalText.make_config(text_dir, cfg.text_key, cfg.eval_fraction)
    return LocalText(config=config, data_dir=data_dir(cfg), file_format="array_record")


def dataset_key(cfg: DataConfig) -> str:
    """A file-name-safe name for the prepared dataset (used to cache its tokenizer)."""
    if cfg.dataset in BUILT_IN:
        return f"{cfg.dataset}-{_built_in_builder(cfg).builder_config.name}"
    return cfg.dataset.replace("/", "-").replace(":", "-")


def prepare_dataset(cfg: DataConfig) -> None:
    """Prepares a built-in dataset if it is not yet in data_dir; checks any other name is there.

    Idempotent and cheap the second time: TFDS finds the finished folder and returns. TFDS writes
    into an `incomplete.*` folder and renames it when done, so a killed run leaves nothing that
    looks prepared.
    """
    _ready_builder(cfg)


def _ready_builder(cfg: DataConfig) -> tfds.core.DatasetBuilder:
    """The builder of a prepared dataset, preparing it first if it is a built-in one."""
    if cfg.dataset in BUILT_IN:
        builder = _built_in_builder(cfg)
        builder.download_and_prepare(file_format="array_record")
        return builder
    return _prepared_builder(cfg)


def _prepared_builder(cfg: DataConfig) -> tfds.core.DatasetBuilder:
    """The already-prepared TFDS dataset `cfg.dataset`, read from files only (no dataset code)."""
    root = data_dir(cfg)
    try:
        return read_only_builder.builder_from_files(cfg.dataset, data_dir=root)
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
        raise DataError(
            f"dataset {cfg.dataset!r} is not prepared in data_dir {root!r} ({type(e).__name__}): "
            f"prepare it first with `tfds build {cfg.dataset} --data_dir {root} "
            "--file_format array_record` (on a machine with TensorFlow), or set data.data_dir to "
            "where it is prepared"
        ) from e


class TextSource:
    """len() and [i] -> str over one split: the document texts, in the split's stored order."""

    def __init__(self, source, text_key: str, where: str):
        self._source = source
        self._text_key = text_key
        self._where = where

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> str:
        record = self._source[index]
        try:
            text = record[self._text_key]
        except KeyError:
            raise DataError(
                f"{self._where} has no feature {self._text_key!r} (it has "
                f"{sorted(record)}): set data.text_key to the text feature"
            ) from None
        return text.decode("utf-8") if isinstance(text, bytes) else str(text)

    def __repr__(self) -> str:
        return f"TextSource({self._where}, {len(self)} documents)"


def open_split(cfg: DataConfig, split: str) -> TextSource:
    """A random-access source of the split's texts; prepares built-in datasets on first use."""
    builder = _ready_builder(cfg)
    key = "text" if cfg.dataset in BUILT_IN else cfg.text_key
    if split not in builder.info.splits:
        raise DataError(
            f"dataset {cfg.dataset!r} in {data_dir(cfg)!r} has no split {split!r}; "
            f"it has {sorted(builder.info.splits)}: fix data.train_split/eval_split"
        )
    where = f"dataset {cfg.dataset!r} split {split!r} in {data_dir(cfg)!r}"
    return TextSource(builder.as_data_source(split=split), key, where)
