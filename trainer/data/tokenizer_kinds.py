"""The two kinds of tokenizer file meshtrain reads, behind one small interface.

- a sentencepiece `.model` (what meshtrain trains, and what Llama 1/2 and PaLM-style models ship);
- a Hugging Face `tokenizer.json`, read with the `tokenizers` library (byte-level BPE as in Llama 3,
  GPT-NeoX/Pythia, GPT-2): most current models ship only this.

The special ids of a tokenizer.json are not in it for every model: transformers keeps them in the
`tokenizer_config.json` beside it (`bos_token`, `eos_token`, `pad_token`), which is read when
present; without it, the conventional end-of-text tokens are looked up among the added tokens.
"""

from __future__ import annotations

import json
import os

import sentencepiece as spm
import tokenizers

from meshtrain.trainer.errors import DataError
from meshtrain.trainer.storage.atomic import write_atomic
from meshtrain.trainer.storage.paths import absolute

SENTENCEPIECE_FILE = "tokenizer.model"  # what Llama 1/2-style checkpoints carry
HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
# End-of-text tokens of common tokenizer.json files without a tokenizer_config.json: GPT-2 and
# GPT-NeoX/Pythia, Llama 3, Llama 2 / Mistral, Gemma.
_KNOWN_EOS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
# sentencepiece turns spaces into U+2581 internally and back on decode, so a literal U+2581 in
# the text would come back as a space; encode() writes it as its three UTF-8 byte pieces instead.
_META_SPACE = "\u2581"


class Tokenizer:
    """Text <-> ids, the number of ids, and the special ids (None where the tokenizer has none)."""

    path: str
    kind: str
    size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None

    def encode(self, text: str) -> list[int]:
        """The ids of `text` alone: no special tokens (documents get their eos from the pipeline)."""
        raise NotImplementedError

    def encode_prompt(self, text: str, *, specials: bool = True) -> list[int]:
        """The ids of a prompt as the model's family expects it (BOS first where the tokenizer
        adds one, as transformers' `tokenizer(text)` does); `specials=False` gives encode(text)."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def pieces(self) -> list[str]:
        """Every id's token, by id: two tokenizers with the same pieces give the same ids."""
        raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, processor: spm.SentencePieceProcessor, path: str):
        self.processor, self.path = processor, path
        self.size = processor.get_piece_size()
        special = lambda i: i if i >= 0 else None
        self.bos_id, self.eos_id, self.pad_id = (
            special(processor.bos_id()),
            special(processor.eos_id()),
            special(processor.pad_id()),
        )

    def encode(self, text: str) -> list[int]:
        """processor.encode(text), except that a literal U+2581 survives the round trip."""
        sp = self.processor
        if _META_SPACE not in text:
            return sp.encode(text)
        meta_bytes = [sp.piece_to_id(f"<0x{b:02X}>") for b in _META_SPACE.encode()]
        ids: list[int] = []
        for i, part in enumerate(text.split(_META_SPACE)):
            if i:
                ids.extend(meta_bytes)
            ids.extend(sp.encode(part))
        return ids

    def encode_prompt(self, text: str, *, specials: bool = True) -> list[int]:
        bos = [self.bos_id] if specials and self.bos_id is not None else []
        return bos + self.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(list(ids))

    def pieces(self) -> list[str]:
        return [self.processor.id_to_piece(i) for i in range(self.size)]


class HuggingFaceTokenizer(Tokenizer):
    kind = "huggingface"

    def __init__(self, tokenizer: tokenizers.Tokenizer, path: str, special_tokens: dict[str, str]):
        self.tokenizer, self.path = tokenizer, path
        self.size = tokenizer.get_vocab_size(with_added_tokens=True)
        ids = {name: tokenizer.token_to_id(token) for name, token in special_tokens.items()}
        eos = ids.get("eos_token")
        if eos is None:
            eos = next((tokenizer.token_to_id(t) for t in _KNOWN_EOS if tokenizer.token_to_id(t) is not None), None)
        self.bos_id, self.eos_id, self.pad_id = ids.get("bos_token"), eos, ids.get("pad_token")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str, *, specials: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=specials).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def pieces(self) -> list[str]:
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        return [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]


def _special_tokens(config_text: str | None) -> dict[str, str]:
    """bos/eos/pad token strings of a tokenizer_config.json (a string, or {"content": ...})."""
    if config_text is None:
        return {}
    config = json.loads(config_text)
    out = {}
    for name in ("bos_token", "eos_token", "pad_token"):
        value = config.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[name] = value
    return out


def is_hf_tokenizer(path: str) -> bool:
    return os.fspath(path).endswith(".json")


def tokenizer_files(path) -> list:
    """The files that make up the tokenizer at `path`: the file, and for a tokenizer.json the
    tokenizer_config.json beside it (its special tokens) when there is one. What convert copies."""
    path = absolute(path, "tokenizer")
    files = [path]
    if is_hf_tokenizer(path) and (path.parent / HF_TOKENIZER_CONFIG).is_file():
        files.append(path.parent / HF_TOKENIZER_CONFIG)
    return files


def copy_tokenizer(path, directory) -> None:
    """Writes the tokenizer at `path` into `directory` under the names a model directory carries
    (tokenizer.model, or tokenizer.json beside its tokenizer_config.json): the tokenizer file last,
    since its presence is what tokenizer_in() takes as the copy being there."""
    directory = absolute(directory, "directory")
    for file in reversed(tokenizer_files(path)):
        name = file.name if is_hf_tokenizer(path) else SENTENCEPIECE_FILE
        write_atomic(directory / name, file.read_bytes())


def tokenizer_in(directory) -> str | None:
    """The tokenizer a model directory carries, sentencepiece's tokenizer.model first (Llama 2 ships
    both, and the .model is the original), else a tokenizer.json; None when it has neither."""
    directory = absolute(directory, "model directory")
    for name in (SENTENCEPIECE_FILE, HF_TOKENIZER_FILE):
        if (directory / name).is_file():
            return os.fspath(directory / name)
    return None


def load_tokenizer(path: str) -> Tokenizer:
    """A sentencepiece .model or a Hugging Face tokenizer.json (local or on an object store); a
    missing or unreadable file is one DataError naming it."""
    path = absolute(path, "data.tokenizer")
    if not path.is_file():
        raise DataError(
            f"tokenizer {os.fspath(path)!r} does not exist: set data.tokenizer to a sentencepiece .model or a "
            "Hugging Face tokenizer.json, or to null to train one on the dataset"
        )
    if is_hf_tokenizer(path):
        config_file = path.parent / HF_TOKENIZER_CONFIG
        try:
            tokenizer = tokenizers.Tokenizer.from_str(path.read_text())
            specials = _special_tokens(config_file.read_text() if config_file.is_file() else None)
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise DataError(f"tokenizer {os.fspath(path)!r} is not a Hugging Face tokenizer.json ({e})") from e
        return HuggingFaceTokenizer(tokenizer, os.fspath(path), specials)
    try:
        processor = spm.SentencePieceProcessor(model_proto=path.read_bytes())
    except (RuntimeError, OSError) as e:
        raise DataError(f"tokenizer {os.fspath(path)!r} is not a sentencepiece model ({e})") from e
    return SentencePieceTokenizer(processor, os.fspath(path))
