"""Hugging Face tokenizer.json as a first-class tokenizer: convert carries it, sample and training use
it, and a run from converted weights never tokenizes with anything else.

The tokenizer is a real byte-level BPE (GPT-NeoX/Pythia and Llama 3 style) trained here with the
`tokenizers` library on CPython's docs, with a BOS added by its post-processor as Llama 3's is;
transformers' own fast tokenizer and generate() are the reference.
"""

from __future__ import annotations

import json
import pydoc_data.topics

import numpy as np
import pytest
from test_convert import load_hf, reference, save_hf_model

from meshtrain.tools.convert import main as convert
from meshtrain.tools.sample import main as sample
from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.data import load_tokenizer
from meshtrain.trainer.errors import DataError
from meshtrain.trainer.run.train import train

BOS, EOS = "<|begin_of_text|>", "<|endoftext|>"


def _byte_level_bpe(directory, vocab_size: int = 320):
    """tokenizer.json + tokenizer_config.json in `directory`; returns the tokenizer.json path."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, BOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(list(pydoc_data.topics.topics.values())[:60], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}))
    return directory / "tokenizer.json"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(root, its tokenizer): a random Llama with a tokenizer.json only, converted to meshtrain."""
    root = tmp_path_factory.mktemp("hf_tokenizer")
    tokenizer = load_tokenizer(_byte_level_bpe(root / "hf"))
    save_hf_model(root / "hf", "llama-gqa-untied", vocab_size=tokenizer.size, max_position_embeddings=256)
    assert convert([str(root / "hf"), str(root / "mt"), "--no-progress"]) == 0
    return root, tokenizer


def test_convert_carries_the_tokenizer_json(converted):
    root, _ = converted
    assert (root / "mt" / "tokenizer.json").read_bytes() == (root / "hf" / "tokenizer.json").read_bytes()
    assert (root / "mt" / "tokenizer_config.json").is_file()
    cfg = load_experiment(str(root / "mt" / "config.yaml"))
    assert cfg.data.tokenizer == str(root / "mt" / "tokenizer.json")
    assert convert([str(root / "mt"), str(root / "back"), "--no-progress"]) == 0  # and back to Hugging Face
    assert (root / "back" / "tokenizer.json").read_bytes() == (root / "hf" / "tokenizer.json").read_bytes()
    exported = json.loads((root / "back" / "config.json").read_text())
    tokenizer = load_tokenizer(root / "hf" / "tokenizer.json")
    assert (exported["bos_token_id"], exported["eos_token_id"]) == (tokenizer.bos_id, tokenizer.eos_id)


def test_sample_equals_transformers_from_the_same_prompt_text(converted, capsys):
    root, _ = converted
    torch, transformers = reference()
    prompt = "def parse(text):"
    assert sample([str(root / "mt"), "--prompt", prompt, "--max-new-tokens", "12", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    reference_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(root / "hf" / "tokenizer.json"))
    prompt_ids = reference_tokenizer(prompt)["input_ids"]
    assert result["prompt_ids"] == prompt_ids and prompt_ids[0] == reference_tokenizer.convert_tokens_to_ids(BOS)
    model = load_hf(root / "hf")
    with torch.no_grad():
        generated = model.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False, pad_token_id=0)
    expected = generated[0, len(prompt_ids) :].tolist()
    eos = reference_tokenizer.convert_tokens_to_ids(EOS)
    expected = expected[: expected.index(eos) + 1] if eos in expected else expected
    assert result["generated_ids"] == expected and len(expected) > 1
    assert result["text"] == reference_tokenizer.decode(expected)


def test_sample_never_substitutes_a_tokenizer(converted, tmp_path, capsys):
    root, _ = converted
    bare = tmp_path / "bare"
    assert convert([str(root / "mt"), str(bare), "--to", "meshtrain", "--params-only", "--no-progress"]) == 0
    (bare / "tokenizer.json").unlink()
    (bare / "tokenizer_config.json").unlink()
    config = (bare / "config.yaml").read_text().replace(str(root / "mt" / "tokenizer.json"), "null")
    (bare / "config.yaml").write_text(config)
    capsys.readouterr()
    assert sample([str(bare), "--prompt", "x = 1", "--max-new-tokens", "2"]) != 0
    assert "carries no tokenizer" in capsys.readouterr().err


def _from_weights(root, tmp_path, data_dir, *overrides):
    return load_experiment(
        str(root / "mt" / "config.yaml"),
        [
            f"data.data_dir={data_dir}",
            f"run_dir={tmp_path / 'run'}",
            "data.seq_len=32",
            "train.batch_size=8",
            "train.steps=2",
            "train.eval_every=0",
            *overrides,
        ],
    )


def test_training_from_converted_weights_uses_their_tokenizer_or_refuses(converted, data_dir, tmp_path):
    root, tokenizer = converted
    with pytest.raises(DataError, match=r"would train a new tokenizer.*data.tokenizer=.*tokenizer.json") as error:
        train(_from_weights(root, tmp_path, data_dir, "data.tokenizer=null"), progress=False)
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()
    other = _byte_level_bpe(tmp_path / "other", vocab_size=300)
    with pytest.raises(DataError, match="another vocabulary"):
        train(_from_weights(root, tmp_path, data_dir, f"data.tokenizer={other}"), progress=False)
    assert not (tmp_path / "run").exists()
    summary = train(_from_weights(root, tmp_path, data_dir), progress=False)  # its own tokenizer.json
    assert summary.end_step == 2 and np.isfinite(summary.last_loss)
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == (root / "mt" / "tokenizer.json").read_bytes()


def test_tokenizer_reports_a_vocabulary_it_cannot_reach(tmp_path, capsys):
    from meshtrain.tools.tokenizer import main as tokenizer_main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"{i}.txt").write_text(f"tiny document {i}\n")
    code = tokenizer_main(
        [
            "data.dataset=local_text",
            f"data.text_dir={corpus}",
            f"data.data_dir={tmp_path / 'data'}",
            "model.vocab_size=4096",
            "data.eval_fraction=0.2",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "fewer than model.vocab_size=4096" in err and "padded to a multiple of 128" in err
