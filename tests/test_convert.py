"""`meshtrain convert` and `meshtrain sample` against transformers, the reference implementation.

Tiny random Llama and GPT-NeoX models are built from configs here (nothing is downloaded), saved
with save_pretrained, and converted: logits must equal transformers' within 1e-4 in float32, round
trips must be bit-exact, and greedy decoding must produce transformers' tokens. Tests that need no
reference (round trips, bad input) start from random meshtrain weights instead, so they also run
where torch is not installed (Python 3.12 here); the others skip there, saying so.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from meshtrain.model.params import count_params
from meshtrain.tools.convert import main as convert
from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.convert.families import family_for_model
from meshtrain.trainer.convert.family_base import hf_tensor_shapes
from meshtrain.trainer.convert.meshtrain_format import param_shapes
from meshtrain.trainer.convert.safetensors_reader import SafetensorsReader
from meshtrain.trainer.convert.verify import meshtrain_logits, sample_tokens
from meshtrain.trainer.run.saved_weights import find_checkpoint, load_decoder


def reference():
    """(torch, transformers), or a skip where they are not installed."""
    return pytest.importorskip("torch"), pytest.importorskip("transformers")


_TINY = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
    initializer_range=0.2,
)
VARIANTS = {
    "llama-gqa-untied": (
        "LlamaConfig",
        dict(
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
            rms_norm_eps=1e-5,
        ),
    ),
    "llama-mqa-tied": ("LlamaConfig", dict(num_key_value_heads=1, head_dim=12, tie_word_embeddings=True)),
    "neox-parallel": (
        "GPTNeoXConfig",
        dict(
            use_parallel_residual=True,
            hidden_act="gelu",
            rope_parameters={"rope_type": "default", "rope_theta": 5000.0, "partial_rotary_factor": 0.5},
        ),
    ),
    "neox-sequential": (
        "GPTNeoXConfig",
        dict(use_parallel_residual=False, hidden_act="gelu_new", tie_word_embeddings=True),
    ),
}


def save_hf_model(directory, variant: str, **overrides):
    """A random transformers model of `variant`, saved as safetensors; returns the model."""
    torch, transformers = reference()
    config_class, fields = VARIANTS[variant]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**{**_TINY, **fields, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    model.save_pretrained(directory, max_shard_size="40KB")  # sharded: exercises the index
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    torch, _ = reference()
    with torch.no_grad():
        return model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()


def load_hf(directory):
    torch, transformers = reference()
    return transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def params_of(path) -> dict:
    from flax import nnx

    model = load_decoder(find_checkpoint(path))
    return {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def run_convert(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what earlier steps (e.g. training) printed
    code = convert([*map(str, argv), "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("variant", VARIANTS)
def test_hf_to_meshtrain_to_hf_matches_transformers_and_round_trips_bit_exactly(variant, tmp_path, capsys):
    reference = save_hf_model(tmp_path / "hf", variant)
    tokens = sample_tokens(_TINY["vocab_size"], 64)
    expected = hf_logits(reference, tokens)

    code, out, err = run_convert(capsys, tmp_path / "hf", tmp_path / "mt", "--verify", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["max_abs_logit_diff"] < 1e-4 and summary["kl_divergence"] < 1e-8
    np.testing.assert_allclose(meshtrain_logits(find_checkpoint(tmp_path / "mt"), tokens), expected, atol=1e-4)

    assert run_convert(capsys, tmp_path / "mt", tmp_path / "hf2")[0] == 0
    np.testing.assert_allclose(hf_logits(load_hf(tmp_path / "hf2"), tokens), expected, atol=1e-4)
    with SafetensorsReader(tmp_path / "hf") as original, SafetensorsReader(tmp_path / "hf2") as exported:
        assert set(exported.names()) <= set(original.names())
        for name in exported.names():
            np.testing.assert_array_equal(exported.read(name), original.read(name), err_msg=name)

    assert run_convert(capsys, tmp_path / "hf2", tmp_path / "mt2")[0] == 0
    first, second = params_of(tmp_path / "mt"), params_of(tmp_path / "mt2")
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(second[name], first[name], err_msg=name)


def test_bfloat16_checkpoints_convert_exactly_and_upcast_losslessly(tmp_path, capsys):
    """Released checkpoints are mostly bfloat16: kept as is, or widened to float32, nothing is lost,
    so --verify holds both to the same-dtype tolerance."""
    torch, _ = reference()
    save_hf_model(tmp_path / "hf32", "llama-gqa-untied").to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    code, out, err = run_convert(capsys, tmp_path / "hf", tmp_path / "mt", "--verify", "--json")
    assert code == 0, err
    kept = json.loads(out)
    assert (kept["source_dtype"], kept["dtype"]) == ("bfloat16", "bfloat16") and kept["tolerance"] is not None
    code, out, err = run_convert(capsys, tmp_path / "hf", tmp_path / "mt32", "--dtype", "float32", "--verify", "--json")
    assert code == 0, err
    assert json.loads(out)["tolerance"] is not None
    bf16, f32 = params_of(tmp_path / "mt"), params_of(tmp_path / "mt32")
    for name in bf16:
        assert bf16[name].dtype == jax.numpy.bfloat16
        np.testing.assert_array_equal(f32[name], bf16[name].astype(np.float32), err_msg=name)
    assert run_convert(capsys, tmp_path / "mt", tmp_path / "hf2")[0] == 0
    with SafetensorsReader(tmp_path / "hf") as original, SafetensorsReader(tmp_path / "hf2") as exported:
        for name in exported.names():
            assert exported.dtype(name) == jax.numpy.bfloat16
            np.testing.assert_array_equal(exported.read(name), original.read(name), err_msg=name)


def test_legacy_neox_rotary_keys_are_read():
    from meshtrain.trainer.convert.family_neox import GPTNeoX

    hf = {
        "vocab_size": 96,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "hidden_act": "gelu",
        "rotary_pct": 0.25,
        "rotary_emb_base": 500.0,
        "use_parallel_residual": True,
    }
    model = GPTNeoX().model_config(hf, load_experiment(None).model)
    assert (model.rope_fraction, model.rope_theta, model.block, model.mlp) == (
        0.25,
        500.0,
        "parallel_two_norms",
        "gelu_exact",
    )


# Each Llama preset's total as Hugging Face shows it for the published checkpoint (the model card's
# "Model size", rounded as there): meta-llama/Llama-2-13b-hf 13B, Llama-2-70b-hf 69B,
# Meta-Llama-3-8B 8.03B, Meta-Llama-3-70B 70.6B, Llama-3.1-405B 406B.
PUBLISHED_LLAMA_SIZES = {
    "llama2-7b": (6.74, 2),
    "llama2-13b": (13, 0),
    "llama2-70b": (69, 0),
    "llama3-8b": (8.03, 2),
    "llama3-70b": (70.6, 1),
    "llama3-405b": (406, 0),
}


@pytest.mark.parametrize("preset", PUBLISHED_LLAMA_SIZES)
def test_llama_presets_are_the_published_models(preset):
    """The preset, exported as `meshtrain convert` writes its config.json, builds a transformers model
    (on torch's meta device: shapes only, no memory) with exactly meshtrain's parameter count, every
    tensor shaped as the converter maps it, and the size the published checkpoint shows."""
    torch, transformers = reference()
    experiment = load_experiment(None, [f"model={preset}"])
    cfg = experiment.model
    family = family_for_model(cfg, "LlamaForCausalLM")
    hf_config = transformers.LlamaConfig(**family.hf_config(cfg, "bfloat16"))
    with torch.device("meta"):
        hf_model = transformers.LlamaForCausalLM(hf_config)
    hf_shapes = {name: tuple(t.shape) for name, t in hf_model.named_parameters()}
    assert hf_shapes == hf_tensor_shapes(family.groups(cfg), param_shapes(experiment), cfg.num_layers)
    assert sum(math.prod(shape) for shape in hf_shapes.values()) == count_params(cfg).total
    billions, digits = PUBLISHED_LLAMA_SIZES[preset]
    assert round(count_params(cfg).total / 1e9, digits) == billions
    assert family.model_config(family.hf_config(cfg, "bfloat16"), cfg) == dataclasses.replace(
        cfg, name="llama", init_std=hf_config.initializer_range
    )


def write_random_meshtrain(directory, *overrides: str):
    """A meshtrain checkpoint of random weights (the library's own writer; no training, no torch)."""
    from flax import nnx

    from meshtrain.model.decoder import Decoder
    from meshtrain.trainer.config import dump_config
    from meshtrain.trainer.convert.meshtrain_format import StreamingCheckpointWriter

    cfg = load_experiment(
        None,
        [
            "model.vocab_size=96",
            "model.d_model=32",
            "model.num_layers=2",
            "model.num_heads=4",
            "model.head_dim=8",
            "model.d_ff=64",
            "model.init_std=0.2",
            *overrides,
        ],
    )
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    writer = StreamingCheckpointWriter(directory, step=0)
    writer.write(
        {tuple(str(k) for k in path): np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    )
    writer.close()
    dump_config(cfg, directory / "config.yaml")
    return directory


LLAMA = ["model.block=sequential", "model.num_kv_heads=2", "model.tie_embeddings=false"]
NEOX = [
    "model.block=parallel_two_norms",
    "model.mlp=gelu_exact",
    "model.norm=layernorm",
    "model.use_bias=true",
    "model.num_kv_heads=4",
    "model.rope_fraction=0.5",
]


@pytest.fixture(scope="module")
def llama_with_tokenizer(tmp_path_factory, data_dir):
    """A Llama over the test corpus tokenizer (512 pieces, eos 1), exported to Hugging Face (with
    the tokenizer) and converted back: (root, root/hf, root/mt)."""
    from meshtrain.trainer.data.tokenizer import tokenizer_path

    root = tmp_path_factory.mktemp("llama512")
    data = load_experiment(None, ["model.vocab_size=512", f"data.data_dir={data_dir}"]).data
    tokenizer = tokenizer_path(data, 512)  # the session's cached tokenizer, named: a run carries its tokenizer
    write_random_meshtrain(
        root / "random", *LLAMA, "model.vocab_size=512", f"data.data_dir={data_dir}", f"data.tokenizer={tokenizer}"
    )
    assert convert([str(root / "random"), str(root / "hf"), "--no-progress"]) == 0
    assert convert([str(root / "hf"), str(root / "mt"), "--no-progress"]) == 0
    return root


def test_greedy_sample_equals_transformers_generate(llama_with_tokenizer, capsys):
    root = llama_with_tokenizer
    model = load_hf(root / "hf")
    from meshtrain.tools.sample import main as sample

    assert sample([str(root / "mt"), "--prompt", "def parse(text):", "--max-new-tokens", "12", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    torch, _ = reference()
    prompt = torch.tensor([result["prompt_ids"]])
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=1, pad_token_id=0)
    assert result["generated_ids"] == generated[0, prompt.shape[1] :].tolist()
    assert len(result["generated_ids"]) > 1


def test_training_continues_from_converted_weights(llama_with_tokenizer, data_dir, tmp_path):
    from meshtrain.trainer.run.train import train

    root = llama_with_tokenizer
    cfg = load_experiment(
        str(root / "mt" / "config.yaml"),
        [
            f"data.data_dir={data_dir}",
            f"run_dir={tmp_path / 'run'}",
            "data.seq_len=32",
            "train.batch_size=8",
            "train.steps=3",
            "checkpoint.every=1",
            "checkpoint.keep=3",
            "train.eval_every=0",
        ],
    )
    summary = train(cfg, progress=False)
    assert (summary.start_step, summary.end_step) == (0, 3) and np.isfinite(summary.last_loss)
    converted = params_of(root / "mt")
    # The cosine schedule's warmup starts at a learning rate of 0: step 1 leaves the weights as converted.
    after_one = params_of(find_checkpoint(tmp_path / "run", step=1).step_dir)
    after_three = params_of(tmp_path / "run")
    for name in converted:
        np.testing.assert_array_equal(after_one[name], converted[name], err_msg=name)
    assert any(not np.array_equal(after_three[name], converted[name]) for name in converted)


def test_a_run_resumes_after_the_weights_it_started_from_are_gone(llama_with_tokenizer, data_dir, tmp_path):
    from meshtrain.trainer.run.train import train

    weights = shutil.copytree(llama_with_tokenizer / "mt", tmp_path / "weights")
    overrides = [
        f"data.data_dir={data_dir}",
        f"run_dir={tmp_path / 'run'}",
        "data.seq_len=32",
        "train.batch_size=8",
        "train.eval_every=0",
        f"checkpoint.init_from={weights}",
    ]
    train(load_experiment(str(weights / "config.yaml"), [*overrides, "train.steps=1"]), progress=False)
    shutil.rmtree(weights)
    resumed = train(
        load_experiment(str(llama_with_tokenizer / "mt" / "config.yaml"), [*overrides, "train.steps=2"]), progress=False
    )
    assert (resumed.start_step, resumed.end_step) == (1, 2)


def test_meshtrain_to_meshtrain_casts_reshards_and_resumes(llama_with_tokenizer, data_dir, tmp_path, capsys):
    from meshtrain.trainer.run.train import train

    root = llama_with_tokenizer
    overrides = [f"data.data_dir={data_dir}", "data.seq_len=32", "train.batch_size=8", "train.eval_every=0"]
    source = tmp_path / "run"
    train(
        load_experiment(str(root / "mt" / "config.yaml"), [*overrides, f"run_dir={source}", "train.steps=2"]),
        progress=False,
    )

    code, out, err = run_convert(
        capsys,
        source,
        tmp_path / "bf16",
        "--to",
        "meshtrain",
        "--dtype",
        "bfloat16",
        "mesh.ici_fsdp=4",
        "mesh.ici_tensor=2",
        "--verify",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["tolerance"] is None and 0 < summary["max_abs_logit_diff"] < 0.5
    resharded = find_checkpoint(tmp_path / "bf16")
    assert (resharded.step, resharded.config.mesh.ici_tensor, resharded.config.model.param_dtype) == (2, 2, "bfloat16")
    before, after = params_of(source), params_of(tmp_path / "bf16")
    for name in before:
        assert after[name].dtype == jax.numpy.bfloat16
        np.testing.assert_array_equal(after[name], before[name].astype(jax.numpy.bfloat16), err_msg=name)
    resumed = train(load_experiment(str(tmp_path / "bf16" / "config.yaml"), ["train.steps=3"]), progress=False)
    assert (resumed.start_step, resumed.end_step) == (2, 3)

    code, _, err = run_convert(capsys, source, tmp_path / "deeper", "--to", "meshtrain", "model.num_layers=3")
    assert code == 2 and "model.num_layers: 2 in the checkpoint, 3 here" in err
    code, _, err = run_convert(capsys, source, tmp_path / "adafactor", "--to", "meshtrain", "optimizer.name=adafactor")
    assert code == 2 and "optimizer.name" in err and "--params-only" in err
    assert run_convert(capsys, source, tmp_path / "params", "--to", "meshtrain", "--params-only")[0] == 0
    weights = find_checkpoint(tmp_path / "params")
    saved_tree = ocp.StandardCheckpointer().metadata(weights.state_dir).item_metadata.tree
    assert set(saved_tree) == {"params"}
    assert weights.config.checkpoint.init_from == str(tmp_path / "params")
    for name, value in params_of(tmp_path / "params").items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)

    code, _, err = run_convert(capsys, source, tmp_path / "hf")
    assert code == 0, err
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert exported["eos_token_id"] == 1 and (tmp_path / "hf" / "tokenizer.model").is_file()


# --- bad input: clear errors, nothing written ---------------------------------------------------


@pytest.mark.parametrize("family", [LLAMA, NEOX], ids=["llama", "neox"])
def test_meshtrain_to_hf_to_meshtrain_is_bit_exact(family, tmp_path, capsys):
    source = write_random_meshtrain(tmp_path / "mt", *family)
    assert run_convert(capsys, source, tmp_path / "hf")[0] == 0
    assert run_convert(capsys, tmp_path / "hf", tmp_path / "mt2")[0] == 0
    assert run_convert(capsys, tmp_path / "mt2", tmp_path / "hf2")[0] == 0
    first, second = params_of(source), params_of(tmp_path / "mt2")
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(second[name], first[name], err_msg=name)
    with SafetensorsReader(tmp_path / "hf") as once, SafetensorsReader(tmp_path / "hf2") as twice:
        assert once.names() == twice.names()
        for name in once.names():
            np.testing.assert_array_equal(twice.read(name), once.read(name), err_msg=name)


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    """A Hugging Face Llama directory, exported from random meshtrain weights."""
    root = tmp_path_factory.mktemp("hf")
    assert convert([str(write_random_meshtrain(root / "mt", *LLAMA)), str(root / "llama"), "--no-progress"]) == 0
    return root / "llama"


def _copy(source, destination):
    shutil.copytree(source, destination)
    return destination


def _no_output_left(destination) -> bool:
    return not destination.exists() and not any(
        p.name.startswith(f".{destination.name}.") for p in destination.parent.iterdir()
    )


def test_pickled_weights_need_allow_pickle(tmp_path, capsys):
    torch, _ = reference()
    source, model = tmp_path / "hf", save_hf_model(tmp_path / "hf", "llama-gqa-untied")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copyfile(source / "config.json", pickled / "config.json")
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    code, _, err = run_convert(capsys, pickled, tmp_path / "out")
    assert code == 2 and "--allow-pickle" in err and "pytorch_model.bin" in err
    assert _no_output_left(tmp_path / "out")
    code, _, err = run_convert(capsys, pickled, tmp_path / "out", "--allow-pickle", "--verify")
    assert code == 0, err


def test_unsupported_architecture_names_the_supported_ones(hf_llama, tmp_path, capsys):
    source = _copy(hf_llama, tmp_path / "gpt2")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    code, _, err = run_convert(capsys, source, tmp_path / "out")
    assert code == 2 and "GPT2LMHeadModel" in err and "LlamaForCausalLM" in err and "GPTNeoXForCausalLM" in err


def test_a_config_json_without_a_size_names_the_key(hf_llama, tmp_path, capsys):
    source = _copy(hf_llama, tmp_path / "sizeless")
    config = json.loads((source / "config.json").read_text())
    del config["hidden_size"]
    (source / "config.json").write_text(json.dumps(config))
    code, _, err = run_convert(capsys, source, tmp_path / "out")
    assert code == 2 and "hidden_size=None" in err and "Traceback" not in err


def test_missing_unexpected_and_misshaped_tensors_are_listed(hf_llama, tmp_path, capsys):
    from meshtrain.trainer.convert.safetensors_writer import SafetensorsWriter

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copyfile(hf_llama / "config.json", broken / "config.json")
    with SafetensorsReader(hf_llama) as reader:
        tensors = {name: reader.read(name) for name in reader.names() if name != "model.norm.weight"}
    tensors["model.extra.weight"] = np.zeros((3,), np.float32)
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((64, 31), np.float32)
    writer = SafetensorsWriter(broken, [(k, v.shape, v.dtype) for k, v in tensors.items()])
    for name, value in tensors.items():
        writer.write(name, value)
    writer.close()
    code, _, err = run_convert(capsys, broken, tmp_path / "out")
    assert code == 2
    assert "missing model.norm.weight (expected shape [32])" in err
    assert "unexpected model.extra.weight (shape [3])" in err
    assert "model.layers.1.mlp.up_proj.weight: expected shape [64, 32], found [64, 31]" in err
    assert _no_output_left(tmp_path / "out")


def test_existing_destination_is_kept_without_overwrite(hf_llama, tmp_path, capsys):
    source = hf_llama
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "precious.txt").write_text("keep me")
    code, _, err = run_convert(capsys, source, destination)
    assert code == 2 and "--overwrite" in err
    assert (destination / "precious.txt").read_text() == "keep me"
    code, _, err = run_convert(capsys, source, source.parent, "--overwrite")
    assert code == 2 and "contain it" in err and source.is_dir()
    assert run_convert(capsys, source, destination, "--overwrite")[0] == 0
    assert not (destination / "precious.txt").exists() and find_checkpoint(destination).step == 0


def test_failed_verify_writes_nothing(hf_llama, tmp_path, capsys):
    reference()
    code, _, err = run_convert(
        capsys, hf_llama, tmp_path / "out", "--dtype", "bfloat16", "--verify", "--tolerance", "1e-9"
    )
    assert code == 2 and "--verify failed" in err
    assert _no_output_left(tmp_path / "out")


def test_a_model_no_family_expresses_is_refused(small_model, tmp_path, capsys, data_dir):
    from meshtrain.trainer.run.train import train

    run = tmp_path / "palm"
    train(
        load_experiment(
            None, [f"data.data_dir={data_dir}", *small_model, f"run_dir={run}", "train.steps=1", "train.eval_every=0"]
        ),
        progress=False,
    )
    code, _, err = run_convert(capsys, run, tmp_path / "hf")
    assert code == 2 and "model.block='parallel'" in err and "LlamaForCausalLM" in err
    assert _no_output_left(tmp_path / "hf")
