"""The raw documents behind the built-in datasets, and which split each one belongs to.

Kept apart from the TFDS builders so the text sources (CPython's docs, a directory of .txt/.jsonl
files) can be read, fingerprinted and validated without touching TFDS at all.
"""

import ast
import dataclasses
import glob
import hashlib
import json
import os
import pydoc_data.topics
import re
import sysconfig
from collections.abc import Iterator

from meshtrain.trainer.errors import DataError

# python_docs documents are consecutive paragraphs of one topic, merged until at least this many
# characters: small enough that many documents exist (so a 5% hold-out is not empty) and large
# enough that each one is a natural unit of text (a section of the reference, not a lone line).
PYTHON_DOCS_CHUNK_CHARS = 2048
# A boundary is the point right after a run of blank lines, so chunks concatenate back to the
# topic text exactly.
_PARAGRAPH_BOUNDARY = re.compile(r"(?<=\n\n)(?=[^\n])")


@dataclasses.dataclass(frozen=True)
class Document:
    """One unit of text with an id that is stable across runs (the split is a hash of it)."""

    id: str
    text: str


def python_docs_documents() -> list[Document]:
    """CPython's pydoc topics, cut at paragraph boundaries into chunks of a few KB."""
    documents = []
    for topic, text in sorted(pydoc_data.topics.topics.items()):
        chunk = ""
        index = 0
        for paragraph in _PARAGRAPH_BOUNDARY.split(text):
            chunk += paragraph
            if len(chunk) >= PYTHON_DOCS_CHUNK_CHARS:
                documents.append(Document(f"{topic}#{index}", chunk))
                chunk, index = "", index + 1
        if chunk.strip():
            documents.append(Document(f"{topic}#{index}", chunk))
    return documents


def python_docs_fingerprint() -> str:
    """Changes whenever the installed Python's doc text or the chunking changes."""
    digest = hashlib.sha256(f"chunk={PYTHON_DOCS_CHUNK_CHARS}\n".encode())
    for topic, text in sorted(pydoc_data.topics.topics.items()):
        digest.update(topic.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()


# python_source takes the standard library's top-level modules smaller than this: 83 modules, about
# 0.6 MB on CPython 3.11 and 3.12, the size of python_docs, so it prepares and trains a tokenizer in
# seconds. (All of Lib/*.py is 4.7 MB, and a tokenizer trained on it takes 14x as long.)
PYTHON_SOURCE_MAX_BYTES = 16_384


def _python_source_files() -> list[str]:
    """The standard library's top-level .py modules below PYTHON_SOURCE_MAX_BYTES, sorted by name."""
    stdlib = sysconfig.get_paths()["stdlib"]
    paths = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    return [p for p in paths if os.path.getsize(p) < PYTHON_SOURCE_MAX_BYTES]


def python_source_documents() -> list[Document]:
    """The standard library's own source (see _python_source_files), each module cut at top-level
    statement boundaries into chunks of at least PYTHON_DOCS_CHUNK_CHARS; chunks concatenate back
    to the module's text exactly."""
    documents = []
    for path in _python_source_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        lines = text.splitlines(keepends=True)
        try:
            starts = sorted({node.lineno - 1 for node in ast.parse(text).body} - {0})
        except SyntaxError:  # a module this Python cannot parse stays one document
            starts = []
        module, chunk, index, previous = os.path.basename(path), "", 0, 0
        for start in [*starts, len(lines)]:
            chunk += "".join(lines[previous:start])
            previous = start
            if len(chunk) >= PYTHON_DOCS_CHUNK_CHARS or start == len(lines):
                if chunk.strip():
                    documents.append(Document(f"{module}#{index}", chunk))
                chunk, index = "", index + 1
    return documents


def python_source_fingerprint() -> str:
    """Changes whenever the installed standard library's modules, the size cut or the chunking change."""
    digest = hashlib.sha256(f"chunk={PYTHON_DOCS_CHUNK_CHARS} max={PYTHON_SOURCE_MAX_BYTES}\n".encode())
    for path in _python_source_files():
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def _text_files(text_dir: str) -> list[str]:
    """The .txt and .jsonl files under text_dir (recursively), sorted so the order is stable."""
    if not os.path.isdir(text_dir):
        raise DataError(
            f"data.text_dir {text_dir!r} is not a directory: point data.text_dir at a directory "
            "of .txt files (one document each) and/or .jsonl files (one document per line)"
        )
    paths = []
    for root, dirs, files in os.walk(text_dir):
        dirs.sort()
        paths.extend(os.path.join(root, f) for f in sorted(files) if f.endswith((".txt", ".jsonl")))
    if not paths:
        raise DataError(
            f"data.text_dir {text_dir!r} holds no .txt or .jsonl files: add some (a .txt file is "
            "one document, each .jsonl line is one document)"
        )
    return paths


def local_text_fingerprint(text_dir: str) -> str:
    """A hash of every file's relative path and bytes, so an edited directory is re-prepared.

    Hashes contents rather than mtimes: it costs one read of the directory per start, which is
    small next to training on it, and never misses an edit that kept the size and mtime.
    """
    digest = hashlib.sha256()
    for path in _text_files(text_dir):
        digest.update(os.path.relpath(path, text_dir).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def local_text_documents(text_dir: str, text_key: str) -> Iterator[Document]:
    """Each .txt file is one document; each non-blank .jsonl line is one, its text under text_key."""
    for path in _text_files(text_dir):
        rel = os.path.relpath(path, text_dir)
        if path.endswith(".txt"):
            with open(path, encoding="utf-8", errors="strict") as f:
                try:
                    text = f.read()
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}: not UTF-8 text ({e}); re-encode it as UTF-8") from e
            if text.strip():
                yield Document(rel, text)
            continue
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                yield from _jsonl_document(path, rel, line_no, line, text_key)


def _jsonl_document(path, rel, line_no, line, text_key) -> Iterator[Document]:
    """Parses one .jsonl line; a bad line names the file and line and what it should hold."""
    if not line.strip():
        return
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}:{line_no}: not valid JSON ({e.msg}); each line must be one "
            f"JSON object with the text under {text_key!r}"
        ) from e
    if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
        raise DataError(
            f"{path}:{line_no}: no string under key {text_key!r}; each line must be "
            f'a JSON object like {{"{text_key}": "..."}} (or set data.text_key)'
        )
    if record[text_key].strip():
        yield Document(f"{rel}:{line_no}", record[text_key])


def _unit_hash(doc_id: str) -> float:
    """A number in [0, 1) fixed by the id alone, so a document's split never depends on order."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2.0**64


def validation_ids(doc_ids: list[str], eval_fraction: float, where: str) -> set[str]:
    """The ids held out for validation: those whose hash falls below eval_fraction.

    Both splits must be non-empty (eval loss on nothing, or training on nothing, is a silent
    misconfiguration), so with few documents the lowest-hash one is always held out and the
    highest-hash one always trained on.
    """
    if len(doc_ids) < 2:
        raise DataError(
            f"{where} has {len(doc_ids)} document(s); at least 2 are needed to hold one out for "
            "validation: split the text into more .txt files or .jsonl lines"
        )
    ranked = sorted(doc_ids, key=_unit_hash)
    held = {i for i in ranked if _unit_hash(i) < eval_fraction}
    held.add(ranked[0])
    held.discard(ranked[-1])
    return held
