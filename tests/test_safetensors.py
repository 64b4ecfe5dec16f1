"""trainer/convert/safetensors against the reference implementation: what our writer writes the
`safetensors` package (and transformers) reads, what they write our reader reads, and bad files,
bad writes and pickles give one-line UserErrors."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from meshtrain.trainer.convert.safetensors_reader import PickleReader, SafetensorsReader, open_weights
from meshtrain.trainer.convert.safetensors_writer import SafetensorsWriter
from meshtrain.trainer.errors import UserError

BF16 = np.dtype(ml_dtypes.bfloat16)


def sample_tensors() -> dict[str, np.ndarray]:
    """Mixed dtypes and shapes, including a scalar, an odd-sized bf16 and an empty tensor."""
    rng = np.random.default_rng(0)
    return {
        "embed.weight": rng.standard_normal((17, 8)).astype(np.float32),
        "layers.0.attn.q": rng.standard_normal((8, 9)).astype(BF16),
        "layers.0.mlp.up": rng.standard_normal((8, 16)).astype(np.float16),
        "layers.1.mlp.up": rng.standard_normal((8, 16)).astype(np.float16),
        "positions": rng.integers(-(2**40), 2**40, size=(5,), dtype=np.int64),
        "scale": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "norm.bias": rng.standard_normal(7).astype(BF16),
    }


def write_all(directory, tensors, *, order=None, **kwargs):
    specs = [(name, array.shape, array.dtype) for name, array in tensors.items()]
    with SafetensorsWriter(directory, specs, **kwargs) as writer:
        for name in order or reversed(list(tensors)):  # not the planned order
            writer.write(name, tensors[name])
    return writer


def assert_same(actual: np.ndarray, expected: np.ndarray):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual.reshape(-1).view(np.uint8), expected.reshape(-1).view(np.uint8))


def read_with_reference(path) -> dict[str, np.ndarray]:
    """Every tensor of one file through the real safetensors; bf16 through torch (numpy has none)."""
    pytest.importorskip("torch")  # not installable on every Python this project supports
    from safetensors import safe_open

    out = {}
    with safe_open(path, framework="pt") as f:
        for name in f.keys():
            out[name] = torch_to_numpy(f.get_tensor(name))
    return out


def torch_to_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BF16).copy()
    return tensor.numpy().copy()


# (1) our writer -> the reference reader


def test_single_file_reads_back_with_safetensors(tmp_path):
    import safetensors.numpy
    from safetensors import safe_open

    tensors = sample_tensors()
    writer = write_all(tmp_path, tensors)
    assert writer.files == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp files left
    path = tmp_path / "model.safetensors"
    assert (8 + struct.unpack("<Q", path.read_bytes()[:8])[0]) % 8 == 0
    numpy_only = {n: a for n, a in tensors.items() if a.dtype != BF16}
    loaded = read_with_reference(path)
    assert loaded.keys() == tensors.keys()
    for name, array in tensors.items():
        assert_same(loaded[name], array)
    with safe_open(path, framework="np") as f:
        assert f.metadata() == {"format": "pt"}
        for name, array in numpy_only.items():
            assert_same(f.get_tensor(name), array)
    # load_file refuses the whole file over bf16, so check it on a file without.
    write_all(tmp_path / "np", numpy_only, metadata={"source": "test"})
    loaded = safetensors.numpy.load_file(tmp_path / "np" / "model.safetensors")
    assert loaded.keys() == numpy_only.keys()
    for name, array in numpy_only.items():
        assert_same(loaded[name], array)
    with safe_open(tmp_path / "np" / "model.safetensors", framework="np") as f:
        assert f.metadata() == {"format": "pt", "source": "test"}


def test_sharded_reads_back_with_safetensors(tmp_path):
    tensors = sample_tensors()
    # 544 bytes of embed.weight (over the limit: a shard of its own), 400, 314.
    writer = write_all(tmp_path, tensors, max_shard_bytes=500)
    assert writer.files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert [sorted(n for n, f in index["weight_map"].items() if f == file) for file in writer.files] == [
        ["embed.weight"],
        ["layers.0.attn.q", "layers.0.mlp.up"],
        ["empty", "layers.1.mlp.up", "norm.bias", "positions", "scale"],
    ]
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in tensors.values())
    seen = {}
    for file in writer.files:
        loaded = read_with_reference(tmp_path / file)
        assert all(index["weight_map"][name] == file for name in loaded)
        seen.update(loaded)
    assert seen.keys() == tensors.keys()
    for name, array in tensors.items():
        assert_same(seen[name], array)
    with SafetensorsReader(tmp_path) as reader:
        assert reader.names() == sorted(tensors)
        for name, array in tensors.items():
            assert reader.shape(name) == array.shape and reader.dtype(name) == array.dtype
            assert_same(reader.read(name), array)


def test_rewrite_removes_stale_files(tmp_path):
    tensors = sample_tensors()
    write_all(tmp_path, tensors, max_shard_bytes=300)
    write_all(tmp_path, tensors)  # now one file: the old shards and index must not shadow it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    with SafetensorsReader(tmp_path) as reader:
        assert_same(reader.read("embed.weight"), tensors["embed.weight"])


# (2) the reference writers -> our reader


def test_reads_reference_numpy_and_torch_files(tmp_path):
    import safetensors.numpy

    pytest.importorskip("torch")
    import safetensors.torch
    import torch

    tensors = {n: a for n, a in sample_tensors().items() if a.dtype != BF16}
    safetensors.numpy.save_file(tensors, tmp_path / "np.safetensors", metadata={"k": "v"})
    with SafetensorsReader(tmp_path / "np.safetensors") as reader:
        assert reader.names() == sorted(tensors) and "scale" in reader and "nope" not in reader
        assert reader.metadata() == {"k": "v"}
        for name, array in tensors.items():
            out = reader.read(name)
            assert_same(out, array)
            assert out.flags.owndata and out.flags.writeable

    torch_tensors = {
        "w": torch.randn(5, 3).to(torch.bfloat16),
        "b": torch.randn(3),
        "i": torch.arange(4, dtype=torch.int32),
        "m": torch.tensor([True, False]),
    }
    (tmp_path / "pt").mkdir()
    safetensors.torch.save_file(torch_tensors, tmp_path / "pt" / "model.safetensors")
    with SafetensorsReader(tmp_path / "pt") as reader:
        assert reader.names() == sorted(torch_tensors)
        assert reader.dtype("w") == BF16
        np.testing.assert_array_equal(reader.read("w").astype(np.float32), torch_tensors["w"].float().numpy())
        for name in ("b", "i", "m"):
            assert_same(reader.read(name), torch_tensors[name].numpy())


@pytest.fixture(scope="module")
def tiny_llama():
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )


def test_reads_transformers_sharded_checkpoint(tmp_path, tiny_llama):
    tiny_llama.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    state = tiny_llama.state_dict()
    with open_weights(tmp_path, allow_pickle=False) as reader:
        assert isinstance(reader, SafetensorsReader)
        assert reader.names() == sorted(state)
        assert reader.metadata().get("format") == "pt"
        for name, tensor in state.items():
            assert_same(reader.read(name), tensor.numpy())


def test_transformers_loads_what_we_write(tmp_path, tiny_llama):
    """Our sharded output is a checkpoint transformers loads (config beside it)."""
    import torch
    from transformers import LlamaForCausalLM

    state = {name: t.numpy() for name, t in tiny_llama.state_dict().items()}
    write_all(tmp_path, state, max_shard_bytes=20_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    tiny_llama.config.save_pretrained(tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path)
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, tiny_llama.state_dict()[name], rtol=0, atol=0)


# (3) bad input


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        SafetensorsReader(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"no \.safetensors files.*config\.json"):
        SafetensorsReader(tmp_path / "empty")

    write_all(tmp_path / "ok", sample_tensors())
    good = (tmp_path / "ok" / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", good[:8])

    def bad(data: bytes, match: str):
        path = tmp_path / "bad.safetensors"
        path.write_bytes(data)
        with pytest.raises(UserError, match=match) as e:
            SafetensorsReader(path)
        assert "bad.safetensors" in str(e.value)

    bad(good[:5], "too short")
    bad(good[: 8 + header_len // 2], "truncated")
    bad(good[:-10], "past the end of the data.*truncated")
    bad(struct.pack("<Q", 2**62) + good[8:], "header length")
    bad(good[:8] + b"{" + b"x" * (header_len - 1) + good[8 + header_len :], "not valid JSON")

    def with_header(header: dict, data: bytes = b"\0" * 16) -> bytes:
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + data

    bad(with_header({"a": {"dtype": "F128", "shape": [2], "data_offsets": [0, 16]}}), "unknown dtype 'F128'")
    bad(with_header({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}), "needs 12")
    bad(with_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 4]}}), "corrupt data_offsets")
    two = lambda a, b, size=16: with_header(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": a},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": b},
        },
        b"\0" * size,
    )
    bad(two([0, 8], [4, 12]), "'b'.*overlaps")
    with pytest.raises(Exception, match="invalid offset"):  # the reference refuses the same file
        safetensors.numpy.load(two([0, 8], [4, 12]))
    bad(two([0, 8], [0, 8]), "overlaps")
    bad(two([0, 8], [12, 20], 20), "gap")
    bad(two([0, 8], [8, 16], 24), "end at byte 16 of a 24-byte")

    # An index naming a shard that is not there.
    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(UserError, match="model-00001-of-00002.safetensors.*does not exist"):
        SafetensorsReader(tmp_path / "sharded")

    with SafetensorsReader(tmp_path / "ok") as reader:
        with pytest.raises(UserError, match="did you mean 'embed.weight'"):
            reader.read("embed.weights")


def test_bad_writes(tmp_path):
    tensors = sample_tensors()
    specs = [(name, array.shape, array.dtype) for name, array in tensors.items()]
    writer = SafetensorsWriter(tmp_path, specs)
    with pytest.raises(
        UserError,
        match=r"'embed.weight': expected shape \(17, 8\) dtype float32, found shape "
        r"\(17, 8\) dtype float16",
    ):
        writer.write("embed.weight", tensors["embed.weight"].astype(np.float16))
    with pytest.raises(UserError, match=r"expected shape \(17, 8\).*found shape \(8, 17\)"):
        writer.write("embed.weight", tensors["embed.weight"].T)
    with pytest.raises(UserError, match="has no tensor 'nope'"):
        writer.write("nope", tensors["scale"])
    writer.write("scale", tensors["scale"])
    with pytest.raises(UserError, match="already written"):
        writer.write("scale", tensors["scale"])
    writer.write("positions", tensors["positions"])
    with pytest.raises(UserError, match=r"6 of 8 planned tensors were never written.*'embed.weight'"):
        writer.close()
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind

    with pytest.raises(UserError, match="listed twice"):
        SafetensorsWriter(tmp_path, [("a", (1,), np.float32), ("a", (1,), np.float32)])
    with pytest.raises(UserError, match="cannot hold dtype complex64"):
        SafetensorsWriter(tmp_path, [("a", (1,), np.complex64)])

    # An exception inside the with block discards the temporary files.
    with pytest.raises(RuntimeError):
        with SafetensorsWriter(tmp_path, specs) as writer:
            writer.write("scale", tensors["scale"])
            raise RuntimeError("conversion failed")
    assert list(tmp_path.iterdir()) == []


def test_pickle_weights_need_allow_pickle(tmp_path, tiny_llama):
    import torch  # tiny_llama has skipped the test where torch is missing

    state = {name: t.to(torch.bfloat16) if "norm" in name else t for name, t in tiny_llama.state_dict().items()}
    tiny_llama.config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    torch.save({"not": "weights"}, tmp_path / "training_args.bin")
    for refuse in (lambda: SafetensorsReader(tmp_path), lambda: open_weights(tmp_path, allow_pickle=False)):
        with pytest.raises(UserError, match=r"pytorch_model\.bin.*arbitrary code.*--allow-pickle"):
            refuse()
    with open_weights(tmp_path, allow_pickle=True) as reader:
        assert isinstance(reader, PickleReader)
        assert reader.names() == sorted(state) and reader.metadata() == {}
        for name, tensor in state.items():
            assert reader.shape(name) == tuple(tensor.shape)
            expected = torch_to_numpy(tensor)
            assert reader.dtype(name) == expected.dtype
            assert_same(reader.read(name), expected)

    # Sharded pickles, through pytorch_model.bin.index.json.
    shards = tmp_path / "shards"
    shards.mkdir()
    names = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[:5], "pytorch_model-00002-of-00002.bin": names[5:]}
    for file, part in halves.items():
        torch.save({n: state[n] for n in part}, shards / file)
    (shards / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}})
    )
    with pytest.raises(UserError, match="pytorch_model.bin.index.json.*--allow-pickle"):
        open_weights(shards, allow_pickle=False)
    with open_weights(shards, allow_pickle=True) as reader:
        assert reader.names() == names
        for name in names:
            assert_same(reader.read(name), torch_to_numpy(state[name]))
