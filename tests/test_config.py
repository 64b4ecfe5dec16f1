"""Config loading: strict errors that name key, value and nearest choice; layered resolution;
serialization round trips; base.yaml completeness; YAML and gin twins resolving to equal configs."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from meshtrain.model.config import model_config_errors
from meshtrain.trainer.config import (
    RUN_IDENTITY_SECTIONS,
    ExperimentConfig,
    config_differences,
    config_from_dict,
    config_to_dict,
    dump_config,
    experiment_names,
    load_config_file,
    load_experiment,
    model_preset,
    preset_names,
    tree,
)
from meshtrain.trainer.config.paths import BASE_YAML, EXPERIMENT_DIR, GIN_DIR
from meshtrain.trainer.errors import ConfigError


def _error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# (overrides, fragments the one-line message must contain)
BAD_OVERRIDES = [
    (["trian.steps=10"], ["trian.steps", "10", "train.steps"]),
    (["train.stpes=10"], ["train.stpes", "train.steps"]),
    (["model.num_layer=4"], ["model.num_layer", "model.num_layers"]),
    (["steps=10"], ["steps", "train.steps"]),
    (["train.steps=abc"], ["train.steps", "'abc'", "integer"]),
    (["train.steps=1.5"], ["train.steps", "1.5", "integer"]),
    (["data.shuffle='yes'"], ["data.shuffle", "'yes'", "true or false"]),
    (["data.shuffle=maybe"], ["data.shuffle", "'maybe'", "true or false"]),
    (["data.shuffle=1"], ["data.shuffle", "1", "true or false"]),
    (["name=123"], ["name", "123", "string"]),
    (["train.steps=null"], ["train.steps", "null", "integer"]),
    (["train.steps=0"], ["train.steps", "0", "positive"]),
    (["train.batch_size=-4"], ["train.batch_size", "-4", "positive"]),
    (["train.log_every=0"], ["train.log_every", "0", "positive"]),
    (["data.seq_len=0"], ["data.seq_len", "0", "positive"]),
    (["data.eval_fraction=1.0"], ["data.eval_fraction", "1.0", "[0, 1)"]),
    (["optimizer.learning_rate=0"], ["optimizer.learning_rate", "0", "positive"]),
    (["optimizer.name=adamx"], ["optimizer.name", "'adamx'", "adamw"]),
    (["optimizer.schedule=cosin"], ["optimizer.schedule", "'cosin'", "cosine"]),
    (["model.norm=rmsnrom"], ["model.norm", "'rmsnrom'", "rmsnorm"]),
    (["model.num_kv_heads=3"], ["model.num_kv_heads", "3", "divisor"]),
    (["model.head_dim=33"], ["model.head_dim", "33", "even"]),
    (["model=palm-63b"], ["palm-63b", "palm-62b", "gpt3-175b"]),
    (["train.steps"], ["train.steps", "="]),
    (["train.batch_ramp=[[10]]"], ["train.batch_ramp", "[[10]]", "pairs"]),
    (["train.batch_ramp=[[10, 32], [5, 64]]"], ["train.batch_ramp[1]", "increasing"]),
    (["train.batch_ramp=[[0, 32]]"], ["train.batch_ramp[0]", "positive"]),
    (["train.batch_size=16", "train.microbatches=3"], ["train.batch_size", "16", "train.microbatches=3"]),
    (["train.microbatches=2", "train.batch_ramp=[[10, 33]]"], ["train.batch_ramp[0]", "33", "microbatches=2"]),
    (["train.microbatches=2", "train.microbatch_size=8"], ["train.microbatch_size", "8", "train.microbatches=2"]),
    (["train.microbatch_size=6", "train.batch_ramp=[[10, 16]]"], ["train.batch_ramp[0]", "16", "microbatch_size=6"]),
    (["model=gpt3-175b", "data.seq_len=4096"], ["data.seq_len", "4096", "model.max_seq_len=2048"]),
    (["checkpoint.keep=0"], ["checkpoint.keep", "0", ">= 1"]),
    (["train={steps: 5, bogus: 1}"], ["train.bogus", "train."]),
    (["model=7"], ["model", "7", "preset"]),
    (["train.steps.x=1"], ["train.steps.x", "train.steps"]),
    (["train.batch_ramp=[[10, 32]"], ["train.batch_ramp", "YAML syntax error"]),
]


@pytest.mark.parametrize("overrides,fragments", BAD_OVERRIDES, ids=lambda v: str(v)[:40])
def test_bad_override_is_one_line_naming_key_value_and_choice(overrides, fragments):
    message = _error(None, overrides)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_error_names_the_source_of_the_value():
    assert "from override 'train.steps=-1'" in _error(None, ["train.steps=-1"])


def test_missing_experiment_names_path_and_lists_shipped():
    message = _error("no-such-experiment")
    assert "no-such-experiment.yaml" in message and "default" in message
    assert "palm-540b-v4-6144" in message
    assert "nosuch.yaml" in _error("/tmp/nosuch.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  steps: 10\n  batch_size: [16\n")
    message = _error(str(path))
    assert str(path) in message and re.search(r":\d+", message) and "YAML" in message


def test_experiment_file_errors(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  steps: 10\n  steps: 20\n")
    assert "'steps' appears twice" in _error(str(path))
    path.write_text("trian:\n  steps: 10\n")
    message = _error(str(path))
    assert "'trian'" in message and "'train'" in message and str(path) in message
    path.write_text("model:\n  preset: tiny\n  d_modle: 64\n")
    assert "model.d_model" in _error(str(path))
    path.write_text("- a list\n")
    assert "mapping" in _error(str(path))


def test_overrides_resolve():
    cfg = load_experiment(
        None,
        [
            "run_dir=/tmp/run",
            "train.steps=10",
            "train.log_every=2",
            "checkpoint.every=5",
            "data.tokenizer=null",
            "seed=3",
            "train.batch_ramp=[[10,32]]",
            "model.z_loss=1e-3",
            "optimizer.learning_rate=1",
            "optimizer.decay_steps=100",
        ],
    )
    assert cfg.run_dir == "/tmp/run" and cfg.seed == 3
    assert (cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every) == (10, 2, 5)
    assert cfg.train.batch_ramp == ((10, 32),)
    assert cfg.data.tokenizer is None
    assert cfg.model.z_loss == 1e-3 and cfg.optimizer.learning_rate == 1.0
    assert isinstance(cfg.optimizer.learning_rate, float)


def test_model_preset_then_fields():
    cfg = load_experiment(
        None,
        [
            "model=palm-62b",
            "model.num_layers=4",
            "model.d_model=64",
            "model.num_heads=4",
            "model.num_kv_heads=2",
            "model.head_dim=16",
            "model.d_ff=128",
            "model.vocab_size=512",
        ],
    )
    m = cfg.model
    assert m.name == "palm-62b" and m.norm == "layernorm" and m.remat == "full"
    assert (m.num_layers, m.d_model, m.num_heads, m.num_kv_heads, m.head_dim, m.d_ff, m.vocab_size) == (
        4,
        64,
        4,
        2,
        16,
        128,
        512,
    )
    # Order on the command line does not matter: the preset is always the bottom layer.
    assert load_experiment(None, ["model.num_layers=4", "model=palm-62b"]).model.num_layers == 4


def test_cli_preset_keeps_experiment_model_fields(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  preset: palm-8b\n  num_layers: 2\ntrain:\n  steps: 7\n")
    cfg = load_experiment(str(path))
    assert cfg.name == "mine"  # no `name:` in the file: its stem
    assert (cfg.model.name, cfg.model.num_layers, cfg.model.d_model) == ("palm-8b", 2, 4096)
    cfg = load_experiment(str(path), ["model=palm-62b", "model.d_model=256"])
    assert (cfg.model.name, cfg.model.num_layers, cfg.model.d_model) == ("palm-62b", 2, 256)


@pytest.mark.parametrize("name", experiment_names())
def test_shipped_experiments_load(name):
    cfg = load_experiment(name)
    assert isinstance(cfg, ExperimentConfig) and cfg.name == name
    assert load_experiment(str(EXPERIMENT_DIR / f"{name}.yaml")) == cfg


@pytest.mark.parametrize("preset", preset_names())
def test_presets_load_and_validate(preset):
    cfg = load_experiment(None, [f"model={preset}"])
    assert cfg.model.name == preset
    assert model_config_errors(cfg.model) == []
    # The default experiment's own model fields (remat) apply on top of whichever preset is named.
    assert dataclasses.replace(model_preset(preset), remat=load_experiment(None).model.remat) == cfg.model


def test_round_trip_dict_and_file(tmp_path):
    for name in experiment_names():
        cfg = load_experiment(name)
        data = config_to_dict(cfg)
        assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain YAML-able
        assert config_from_dict(data) == cfg
        path = tmp_path / f"{name}.yaml"
        dump_config(cfg, path)
        assert load_config_file(path) == cfg
        assert load_experiment(str(path)) == cfg  # a run directory's config.yaml is an experiment
        assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_a_run_config_written_before_a_field_existed_still_loads(tmp_path):
    """Resuming across an upgrade: fields the file lacks take base.yaml's defaults; unknown keys
    and bad values stay errors."""
    cfg = load_experiment(None, ["model.rope_fraction=0.5", "train.steps=7"])
    data = config_to_dict(cfg)
    del data["model"]["rope_fraction"], data["checkpoint"]["init_from"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    loaded = load_config_file(path)
    assert (loaded.model.rope_fraction, loaded.checkpoint.init_from, loaded.train.steps) == (1.0, None, 7)
    data["train"]["stepz"] = 3
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        load_config_file(path)


def test_config_from_dict_is_strict():
    data = config_to_dict(load_experiment(None))
    del data["train"]["steps"]
    with pytest.raises(ConfigError, match=r"train\.steps"):
        config_from_dict(data)
    data = config_to_dict(load_experiment(None))
    data["optimizer"]["lr"] = 1.0
    with pytest.raises(ConfigError, match=r"optimizer\.lr.*optimizer\.learning_rate"):
        config_from_dict(data)
    data = config_to_dict(load_experiment(None))
    data["checkpoint"]["keep"] = 0
    with pytest.raises(ConfigError, match=r"checkpoint\.keep=0"):
        config_from_dict(data)


def test_config_differences():
    a = load_experiment(None)
    b = load_experiment(None, ["seed=1", "model.num_layers=2", "train.steps=5"])
    assert config_differences(a, b) == [("seed", 0, 1), ("model.num_layers", 4, 2), ("train.steps", a.train.steps, 5)]
    assert config_differences(a, b, RUN_IDENTITY_SECTIONS) == [("seed", 0, 1), ("model.num_layers", 4, 2)]
    assert config_differences(a, a, RUN_IDENTITY_SECTIONS) == []


def test_base_yaml_documents_every_leaf():
    for number, line in enumerate(BASE_YAML.read_text().splitlines(), 1):
        m = re.match(r"^\s*(\w+):\s*(.*)$", line)
        if m and m.group(2) and not m.group(2).startswith("#"):
            assert "#" in m.group(2), f"base.yaml:{number} has no comment: {line!r}"


def test_base_yaml_covers_every_field_exactly():
    base = yaml.safe_load(BASE_YAML.read_text())
    flat = {
        f"{s}.{k}" if isinstance(v, dict) else s
        for s, v in base.items()
        for k in (v if isinstance(v, dict) else [None])
    }
    assert flat == set(tree.leaf_types())
    assert set(base) == {f.name for f in dataclasses.fields(ExperimentConfig)}


def test_base_yaml_missing_field_is_an_error(tmp_path, monkeypatch):
    from meshtrain.trainer.config import resolve

    text = BASE_YAML.read_text().replace("  keep: 3 ", "  # keep: 3 ")
    (tmp_path / "base.yaml").write_text(text)
    monkeypatch.setattr(resolve, "BASE_YAML", tmp_path / "base.yaml")
    message = _error(None)
    assert "checkpoint.keep" in message and "base.yaml" in message


# --- gin ---------------------------------------------------------------------------------------


def test_every_experiment_has_a_gin_twin():
    assert sorted(p.stem for p in GIN_DIR.glob("*.gin")) == experiment_names()


@pytest.mark.parametrize("name", experiment_names())
def test_gin_twin_resolves_equal(name):
    from_yaml = load_experiment(name)
    from_gin = load_experiment(None, gin_files=[str(GIN_DIR / f"{name}.gin")])
    assert config_differences(from_yaml, from_gin) == []
    assert from_gin == from_yaml
    assert load_experiment(None, gin_files=[name]) == from_yaml  # bare name -> configs/gin/


def test_gin_params_override_and_layer_like_yaml():
    cfg = load_experiment(
        None,
        ["train.log_every=3"],
        gin_files=["default"],
        gin_params=["TrainConfig.steps = 7", "Experiment.model = 'palm-62b'", "ModelConfig.num_layers = 2"],
    )
    assert (cfg.train.steps, cfg.train.log_every) == (7, 3)
    assert (cfg.model.name, cfg.model.num_layers, cfg.model.d_model) == ("palm-62b", 2, 8192)
    yaml_cfg = load_experiment(None, ["train.steps=7", "model=palm-62b", "model.num_layers=2", "train.log_every=3"])
    assert cfg == yaml_cfg
    # gin_params alone apply on top of the default YAML experiment; no state leaks between loads.
    assert load_experiment(None, gin_params=["TrainConfig.steps = 9"]).train.steps == 9
    assert load_experiment(None, gin_files=["default"]) == load_experiment(None)


def test_gin_macros(tmp_path):
    path = tmp_path / "m.gin"
    path.write_text("STEPS = 11\nTrainConfig.steps = %STEPS\nCheckpointConfig.every = %STEPS\n")
    cfg = load_experiment(None, gin_files=[str(path)], gin_params=["STEPS = 12"])
    assert (cfg.name, cfg.train.steps, cfg.checkpoint.every) == ("m", 12, 12)


@pytest.mark.parametrize(
    "params,fragments",
    [
        (["ModelConfig.num_layer = 3"], ["ModelConfig.num_layer", "ModelConfig.num_layers"]),
        (["TrianConfig.steps = 3"], ["TrianConfig", "TrainConfig"]),
        (["TrainConfig.steps = 'abc'"], ["train.steps", "'abc'", "integer"]),
        (["TrainConfig.steps = -1"], ["train.steps", "-1", "positive"]),
        (["Experiment.model = 'palm-63b'"], ["palm-63b", "palm-62b"]),
        (["scope/TrainConfig.steps = 3"], ["scope", "TrainConfig"]),
        (["TrainConfig.steps = @ModelConfig()"], ["TrainConfig.steps", "literal"]),
    ],
)
def test_bad_gin_params(params, fragments):
    message = _error(None, gin_files=["default"], gin_params=params)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_bad_gin_files(tmp_path):
    message = _error(None, gin_files=["no-such"])
    assert "no-such" in message and "default" in message
    path = tmp_path / "bad.gin"
    path.write_text("TrainConfig.steps = 3\nTrainConfig.stepz = 4\n")
    message = _error(None, gin_files=[str(path)])
    assert "TrainConfig.stepz" in message and "TrainConfig.steps" in message
    path.write_text("TrainConfig.steps = = 3\n")
    assert "bad.gin" in _error(None, gin_files=[str(path)])


# --- hardware kinds (configs/hardware.yaml) and the checks on mesh, distributed and hardware ---


def test_hardware_kinds_and_specs():
    from meshtrain.trainer.config.hardware import hardware_kinds, hardware_spec

    assert hardware_kinds() == (
        "tpu-v3",
        "tpu-v4",
        "tpu-v5e",
        "tpu-v5p",
        "tpu-v6e",
        "v100",
        "a100-40gb",
        "a100-80gb",
        "h100",
        "h200",
        "b200",
        "cpu",
    )
    gib, gb = 2**30, 10**9
    expected = {
        "tpu-v3": ("tpu", 4, 32 * gib, "v3"),
        "tpu-v4": ("tpu", 4, 32 * gib, "v4"),
        "tpu-v5e": ("tpu", 4, 16 * gb, "v5e"),
        "tpu-v5p": ("tpu", 4, 95 * gb, "v5"),
        "tpu-v6e": ("tpu", 4, 32 * gb, "v6e"),
        "v100": ("gpu", 8, 32 * gb, None),
        "a100-40gb": ("gpu", 8, 40 * gb, None),
        "a100-80gb": ("gpu", 8, 80 * gb, None),
        "h100": ("gpu", 8, 80 * gb, None),
        "h200": ("gpu", 8, 141 * gb, None),
        "b200": ("gpu", 8, 180 * gb, None),
        "cpu": ("cpu", 1, None, None),
    }
    for kind, fields in expected.items():
        spec = hardware_spec(kind)
        assert (spec.platform, spec.chips_per_host, spec.hbm_bytes, spec.tpu_topology_prefix) == fields
        assert spec.kind == kind and spec.source.strip()
        if spec.platform == "tpu":
            assert spec.tpu_accelerator_type and spec.tpu_type_counts in ("cores", "chips")
        if spec.platform != "cpu":
            assert spec.gke_accelerator


def test_a_fitted_matmul_ceiling_is_marked_and_checked():
    """TPU kinds with published runs carry a fitted ceiling, marked so (no TPU shape search is
    published); a ceiling given by hand is a measurement; a flag without a ceiling, or one that is not
    a boolean, is refused naming the field."""
    from meshtrain.trainer.config.hardware import hardware_spec

    v4 = hardware_spec("tpu-v4")
    assert v4.matmul_ceiling_fitted and 0 < v4.matmul_ceiling < 1
    assert not hardware_spec("h100").matmul_ceiling_fitted and hardware_spec("h100").matmul_ceiling
    measured = hardware_spec("tpu-v4", {"matmul_ceiling": 0.9})
    assert measured.matmul_ceiling == 0.9 and not measured.matmul_ceiling_fitted
    with pytest.raises(ConfigError, match=r"matmul_ceiling_fitted='yes', expected true or false"):
        hardware_spec("tpu-v4", {"matmul_ceiling_fitted": "yes"})
    with pytest.raises(ConfigError, match=r"matmul_ceiling_fitted is true but there is no matmul_ceiling"):
        hardware_spec("tpu-v3", {"matmul_ceiling_fitted": True})


def test_a_kind_nobody_measured_plans_at_its_familys_lowest_matmul_ceiling():
    """TPU v3 has no published shape search and no published run with its layout: the performance model
    runs its matmuls at the lowest ceiling of the TPU kinds (v4's, fitted), not at the best kind's 1.0,
    so a plan on it promises no more than a measured sibling. A kind with its own ceiling keeps it; a
    family with none (cpu) runs at 1.0."""
    from meshtrain.trainer.config.hardware import efficiency_family, hardware_kinds, hardware_spec, matmul_ceiling
    from meshtrain.trainer.planning.chip_rates import ChipRates

    specs = [hardware_spec(kind) for kind in hardware_kinds()]
    tpu_ceilings = [s.matmul_ceiling for s in specs if s.efficiency_family == "tpu" and s.matmul_ceiling is not None]
    v3 = hardware_spec("tpu-v3")
    assert v3.matmul_ceiling is None and matmul_ceiling(v3) == min(tpu_ceilings) < max(tpu_ceilings)
    assert matmul_ceiling(v3) == hardware_spec("tpu-v4").matmul_ceiling
    family = efficiency_family(v3)
    chip = ChipRates(v3, family, v3.peak_bf16_flops, v3.hbm_bandwidth_bytes_per_s)
    assert chip.matmul_flops == pytest.approx(v3.peak_bf16_flops * min(tpu_ceilings) * family.matmul_efficiency)
    for kind in ("h100", "v100", "tpu-v5e"):
        assert matmul_ceiling(hardware_spec(kind)) == hardware_spec(kind).matmul_ceiling
    assert hardware_spec("cpu").matmul_ceiling is None and matmul_ceiling(hardware_spec("cpu")) == 1.0


def test_unknown_hardware_kind_lists_known_kinds():
    from meshtrain.trainer.config.hardware import hardware_spec

    with pytest.raises(ConfigError, match=r"unknown hardware kind.*tpu-v4, tpu-v5e.*did you mean 'h100'"):
        hardware_spec("h10")


@pytest.mark.parametrize(
    "topology,chips",
    [("v4:12x16x16", 3072), ("v4:2x2x1", 4), ("v5e:16x16", 256), ("v5:2x2x1", 4), ("v6e:1x1", 1), ("2x2x4", 16)],
)
def test_chips_in_topology(topology, chips):
    from meshtrain.trainer.config.hardware import chips_in_topology

    assert chips_in_topology(topology) == chips


@pytest.mark.parametrize(
    "topology", ["v4", "v4:", "v4:2x2x", "v4:2x0x1", "v4:2*2*1", "v4-8", "v4:1x2x3x4", "", "V4:2x2x1"]
)
def test_malformed_topology_is_a_config_error(topology):
    from meshtrain.trainer.config.hardware import chips_in_topology

    with pytest.raises(ConfigError, match=r"hardware.topology=.*'v4:12x16x16'"):
        chips_in_topology(topology)


BAD_SYSTEM_OVERRIDES = [
    (["hardware.kind=tpu-v5"], ["hardware.kind", "'tpu-v5'", "tpu-v4", "did you mean"]),
    (["hardware.kind=gpu"], ["hardware.kind", "'gpu'", "h100"]),
    (["hardware.num_slices=0"], ["hardware.num_slices", "0", "positive"]),
    (["hardware.chips=0"], ["hardware.chips", "0", "positive"]),
    (["hardware.kind=h100", "hardware.topology=v4:2x2x1"], ["hardware.topology", "hardware.kind=h100"]),
    (["hardware.kind=tpu-v4", "hardware.topology=v4:2x2"], []),  # a valid 2-D name (checked below)
    (["hardware.kind=tpu-v4", "hardware.topology=v4:2x2xq"], ["hardware.topology", "'v4:2x2xq'", "v4:12x16x16"]),
    (["hardware.kind=tpu-v4", "hardware.topology=v5e:4x4"], ["hardware.topology", "tpu-v4", "v4:AxBxC"]),
    (
        ["hardware.kind=tpu-v4", "hardware.topology=v4:2x2x1", "hardware.num_slices=2", "hardware.chips=4"],
        ["hardware.chips", "4", "8", "num_slices=2"],
    ),
    (["distributed.num_processes=0"], ["distributed.num_processes", "0", "positive"]),
    (["distributed.process_id=-1"], ["distributed.process_id", "-1", ">= 0"]),
    (["distributed.num_processes=2", "distributed.process_id=2"], ["distributed.process_id", "2", "num_processes=2"]),
    (["distributed.initialization_timeout_s=0"], ["distributed.initialization_timeout_s", "0", ">= 1"]),
    (["mesh.ici_fsdp=0"], ["mesh.ici_fsdp", "0", "-1"]),
    (["mesh.dcn_data=-2"], ["mesh.dcn_data", "-2", "-1"]),
    (["mesh.ici_tensor=0", "mesh.dcn_sequence=0"], ["mesh.ici_tensor", "mesh.dcn_sequence"]),
]


@pytest.mark.parametrize("overrides,fragments", BAD_SYSTEM_OVERRIDES, ids=lambda v: str(v)[:50])
def test_bad_system_overrides(overrides, fragments):
    if not fragments:
        assert load_experiment(None, overrides).hardware.topology == "v4:2x2"
        return
    message = _error(None, overrides)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_good_system_overrides():
    cfg = load_experiment(
        None,
        [
            "hardware.kind=tpu-v5p",
            "hardware.topology=v5:2x2x2",
            "hardware.num_slices=2",
            "hardware.chips=16",
            "distributed.num_processes=4",
            "distributed.process_id=3",
            "distributed.coordinator_address=10.0.0.1:1234",
            "mesh.ici_fsdp=-1",
            "mesh.dcn_data=2",
        ],
    )
    assert (cfg.hardware.chips, cfg.distributed.process_id, cfg.mesh.dcn_data) == (16, 3, 2)
    # v5p topologies may also be written with the kind's own name.
    assert load_experiment(None, ["hardware.kind=tpu-v5p", "hardware.topology=v5p:2x2x1"]).hardware.kind == "tpu-v5p"
