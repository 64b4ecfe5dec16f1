"""TFDS builders for the built-in datasets: python_docs, python_source and local_text.

Both produce {"text": Text} with a train and a validation split. Each builder's config name is a
hash of everything that decides its content (source text, eval_fraction, text_key), so two
directories, or one directory before and after an edit, are prepared into different folders
and never collide. Written as array_record with a plain FeaturesDict DatasetInfo, because that
path of TFDS needs no TensorFlow.
"""

import dataclasses
import hashlib
from collections.abc import Callable

import tensorflow_datasets as tfds

from meshtrain.trainer.data import documents

_FEATURES = {"text": tfds.features.Text()}


@dataclasses.dataclass
class TextConfig(tfds.core.BuilderConfig):
    """A BuilderConfig that also carries where the text comes from and how it is split."""

    text_dir: str | None = None
    text_key: str = "text"
    eval_fraction: float = 0.05


def _config_name(*parts: object) -> str:
    """A short, folder-safe hash of the parts: the prepared dataset's identity."""
    return "h" + hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def _split_generators(builder, docs_factory, where):
    """train/validation generators over docs_factory(), split by validation_ids (hash of id)."""
    config = builder.builder_config
    held = documents.validation_ids([d.id for d in docs_factory()], config.eval_fraction, where)

    def generate(validation: bool):
        for doc in docs_factory():
            if (doc.id in held) == validation:
                yield doc.id, {"text": doc.text}

    return {"train": generate(False), "validation": generate(True)}


class _TextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What both builders share: a {"text"} DatasetInfo and no checksums file.

    `code_path = None` because TFDS only uses it to find a checksums.tsv for downloads (we have
    none), and computing it for a module inside a package needs `importlib_resources`, which is
    not a meshtrain dependency.
    """

    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict(_FEATURES), description=self.__doc__
        )

    def _generate_examples(self):  # Unused: _split_generators returns the generators.
        raise NotImplementedError


class _EmbeddedText(_TextBuilder, skip_registration=True):
    """A corpus every Python install carries: its documents and their fingerprint (which names the
    prepared folder) come from trainer/data/documents.py."""

    corpus: Callable[[], list]  # -> the documents, each with .id and .text
    corpus_fingerprint: Callable[[], str]
    summary: str

    @classmethod
    def make_config(cls, eval_fraction: float) -> TextConfig:
        name = _config_name(cls.corpus_fingerprint(), eval_fraction)
        return TextConfig(name=name, eval_fraction=eval_fraction, description=cls.summary)

    def _split_generators(self, dl_manager):
        return _split_generators(self, self.corpus, self.name)


class PythonDocs(_EmbeddedText):
    """CPython's own documentation text (pydoc_data.topics), which every Python install carries."""

    corpus = staticmethod(documents.python_docs_documents)
    corpus_fingerprint = staticmethod(documents.python_docs_fingerprint)
    summary = "CPython pydoc topics, paragraph chunks"


class PythonSource(_EmbeddedText):
    """The standard library's own source: its small top-level modules, cut at top-level statements."""

    corpus = staticmethod(documents.python_source_documents)
    corpus_fingerprint = staticmethod(documents.python_source_fingerprint)
    summary = "CPython standard library source"


class LocalText(_TextBuilder):
    """A directory of .txt files (one document each) and .jsonl files (one document per line)."""

    @classmethod
    def make_config(cls, text_dir: str, text_key: str, eval_fraction: float) -> TextConfig:
        fingerprint = documents.local_text_fingerprint(text_dir)
        name = _config_name(text_dir, fingerprint, text_key, eval_fraction)
        return TextConfig(
            name=name,
            text_dir=text_dir,
            text_key=text_key,
            eval_fraction=eval_fraction,
            description=f"text files in {text_dir}",
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        return _split_generators(
            self,
            lambda: documents.local_text_documents(config.text_dir, config.text_key),
            f"data.text_dir {config.text_dir!r}",
        )
