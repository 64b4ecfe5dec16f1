"""Turning a DataConfig into a prepared dataset and a random-access source of document texts.

`python_docs`, `python_source` and `local_text` are built here on first use; any other `data.dataset` is a TFDS
name that must already be prepared (as array_record) in `data.data_dir`. Nothing here downloads:
an unprepared name fails at once with the command that would prepare it.

`data.data_dir` may be on an object store. array_record reads and writes local files only, so
such a dataset is read from a local copy under `data.stage_dir` (made once per host, reused while
the files match), and a built-in one prepared here is uploaded when done (dataset_info.json last:
TFDS takes a version folder holding it as prepared).
"""

import os

import tensorflow_datasets as tfds
from tensorflow_datasets.core import read_only_builder

from meshtrain.trainer.config.schema import DataConfig
from meshtrain.trainer.data.builders import LocalText, PythonDocs, PythonSource
from meshtrain.trainer.data.mixture import sources_of
from meshtrain.trainer.errors import DataError
from meshtrain.trainer.storage.paths import absolute, is_url, url_scheme
from meshtrain.trainer.storage.transfer import copy_tree, stage_locally

BUILT_IN = ("python_docs", "python_source", "local_text")


def data_dir(cfg: DataConfig) -> str:
    """cfg.data_dir: a URL as it is, a local path with ~ expanded and made absolute (TFDS would
    take '~' as a folder name)."""
    return os.fspath(absolute(cfg.data_dir, "data.data_dir"))


def _local_root(cfg: DataConfig) -> str:
    """Where TFDS reads and writes array_record files: data_dir, or its local copy under stage_dir."""
    if not is_url(cfg.data_dir):
        return data_dir(cfg)
    remote = data_dir(cfg)
    scheme = url_scheme(remote)
    return os.path.join(absolute(cfg.stage_dir, "data.stage_dir"), scheme, remote[len(scheme) + 3 :])


def _built_in_builder(cfg: DataConfig, root: str) -> tfds.core.DatasetBuilder:
    """The builder for a built-in dataset in `root`, configured (and so keyed) by cfg."""
    for builder in (PythonDocs, PythonSource):
        if cfg.dataset == builder.name:
            return builder(config=builder.make_config(cfg.eval_fraction), data_dir=root, file_format="array_record")
    if not cfg.text_dir:
        raise DataError(
            "data.dataset is local_text but data.text_dir is not set: set it to a directory of .txt and/or .jsonl files"
        )
    text_dir = os.path.abspath(os.path.expanduser(cfg.text_dir))
    config = LocalText.make_config(text_dir, cfg.text_key, cfg.eval_fraction)
    return LocalText(config=config, data_dir=root, file_format="array_record")


def dataset_key(cfg: DataConfig) -> str:
    """A file-name-safe name for the prepared dataset (used to cache its tokenizer)."""
    if cfg.dataset in BUILT_IN:
        return f"{cfg.dataset}-{_built_in_builder(cfg, _local_root(cfg)).builder_config.name}"
    return cfg.dataset.replace("/", "-").replace(":", "-")


def prepare_dataset(cfg: DataConfig) -> None:
    """Prepares each built-in source that is not yet in data_dir; checks every other one is there.
    All unprepared TFDS sources are named in one error, each with the command that prepares it.

    Idempotent and cheap the second time: TFDS finds the finished folder and returns. TFDS writes
    into an `incomplete.*` folder and renames it when done, so a killed run leaves nothing that
    looks prepared.
    """
    missing = []
    for source in sources_of(cfg):
        if source.data.dataset in BUILT_IN:
            _ready_builder(source.data)
        elif not _is_prepared(source.data):
            root = _local_root(source.data)
            missing.append(f"{source.name} ({source.data.dataset!r}: {_build_command(source.data.dataset, root)})")
    if missing:
        raise DataError(
            f"{len(missing)} of the data's {len(sources_of(cfg))} source(s) are not prepared in data_dir "
            f"{data_dir(cfg)!r}: {'; '.join(missing)}; prepare them (on a machine with TensorFlow), or set "
            "data.data_dir to where they are"
        )


class NotPrepared(DataError):
    """A TFDS name that data_dir does not hold."""


def _is_prepared(cfg: DataConfig) -> bool:
    """Whether a TFDS name can be opened from data_dir (staging it first when that is a URL)."""
    try:
        _ready_builder(cfg)
    except NotPrepared:
        return False
    return True


def _build_command(dataset: str, root: str) -> str:
    return f"tfds build {dataset} --data_dir {root} --file_format array_record"


def _ready_builder(cfg: DataConfig) -> tfds.core.DatasetBuilder:
    """The builder of a prepared dataset on local files, preparing it first if it is a built-in
    one; for a data_dir on an object store, staged from there (or prepared and uploaded)."""
    local = _local_root(cfg)
    if cfg.dataset not in BUILT_IN:
        if is_url(cfg.data_dir):
            remote = _prepared_builder(cfg, data_dir(cfg))
            stage_locally(remote.data_path, _local_version_dir(remote, cfg, local))
        return _prepared_builder(cfg, local)
    if not is_url(cfg.data_dir):
        builder = _built_in_builder(cfg, local)
        builder.download_and_prepare(file_format="array_record")
        return builder
    remote = _built_in_builder(cfg, data_dir(cfg))
    prepared_there = (remote.data_path / "dataset_info.json").exists()
    if prepared_there:
        stage_locally(remote.data_path, _local_version_dir(remote, cfg, local))
    builder = _built_in_builder(cfg, local)
    builder.download_and_prepare(file_format="array_record")  # a staged copy is found: nothing to do
    if not prepared_there:
        copy_tree(builder.data_path, remote.data_path, last=("dataset_info.json",))
    return builder


def _local_version_dir(remote: tfds.core.DatasetBuilder, cfg: DataConfig, local: str) -> str:
    """The local copy's place for the remote builder's version folder (same path under the root)."""
    return os.path.join(local, os.fspath(remote.data_path)[len(data_dir(cfg).rstrip("/")) + 1 :])


def _prepared_builder(cfg: DataConfig, root: str) -> tfds.core.DatasetBuilder:
    """The already-prepared TFDS dataset `cfg.dataset` in `root`, read from files only (no dataset code)."""
    try:
        return read_only_builder.builder_from_files(cfg.dataset, data_dir=root)
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
        raise NotPrepared(
            f"dataset {cfg.dataset!r} is not prepared in data_dir {root!r} ({type(e).__name__}): "
            f"prepare it first with `{_build_command(cfg.dataset, root)}` (on a machine with TensorFlow), "
            "or set data.data_dir to where it is prepared"
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
