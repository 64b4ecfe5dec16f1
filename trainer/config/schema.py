"""The typed tree of an experiment: the single truth that YAML files, gin files and `key=value`
overrides all resolve to.

Fields carry no defaults here on purpose: configs/base.yaml holds every default with a line of doc,
so there is one place to read and change them. The loader rejects a base.yaml that misses a field.
"""

from __future__ import annotations

import dataclasses

from meshtrain.model.config import ModelConfig

OPTIMIZERS = ("adamw", "adafactor")
# The most losses the spike guard's running statistic spans: its ring buffer in the train state has
# this fixed size, so a run resumes under any spike.window (trainer/step/guard.py).
SPIKE_WINDOW_SLOTS = 256
SCHEDULES = ("cosine", "rsqrt", "constant")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One source of a data mixture (`data.mixture`).

    The one dataclass here with defaults: a mixture entry is a mapping inside a list, where
    base.yaml cannot hold a default per key. A key left out (null) takes the data section's own
    value, so an entry names only what differs: its dataset and weight, and for local_text its
    text_dir. `name` labels the source in metrics (eval_loss/<name>) and defaults to the dataset.
    """

    dataset: str
    weight: float
    name: str | None = None
    text_dir: str | None = None
    text_key: str | None = None
    train_split: str | None = None
    eval_split: str | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where text comes from, how it is tokenized and packed into rows."""

    dataset: str
    text_dir: str | None
    text_key: str
    data_dir: str
    stage_dir: str
    train_split: str
    eval_split: str
    eval_fraction: float
    tokenizer: str | None
    seq_len: int
    shuffle: bool
    shards: int
    prefetch: int
    mixture: tuple[SourceConfig, ...]
    mixture_schedule: tuple[tuple[int, tuple[float, ...]], ...]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How many steps, how big a batch, how often to log and evaluate."""

    steps: int
    batch_size: int
    batch_ramp: tuple[tuple[int, int], ...]
    microbatches: int
    microbatch_size: int
    log_every: int
    eval_every: int
    eval_batches: int
    skip_batches: tuple[tuple[int, int], ...]
    watchdog_s: float
    compilation_cache: str | None
    profile_start: int
    profile_steps: int


@dataclasses.dataclass(frozen=True)
class SpikeConfig:
    """Loss spikes and non-finite steps: which steps apply no update, and when to rewind and skip data
    (PaLM's recipe, section 5.1: restart ~100 steps before the spike, skip ~200-500 batches)."""

    window: int
    factor: float
    min_jump: float
    max_consecutive: int
    rewind_steps: int
    skip_batches: int
    max_rewinds: int


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The update rule and its learning-rate schedule."""

    name: str
    learning_rate: float
    schedule: str
    warmup_steps: int
    decay_steps: int | None
    min_lr_ratio: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    grad_clip: float
    adafactor_decay_rate: float


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When checkpoints are written and which are kept."""

    every: int
    keep: int
    keep_every: int | None
    every_minutes: float
    async_save: bool
    checksums: bool
    init_from: str | None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """How devices are arranged and which mesh axes each logical axis of the model spans.

    Each mesh axis has a size inside a slice (ici_*: the fast chip-to-chip links) and across slices
    (dcn_*: the data-center network); -1 fills with the devices that are left.
    """

    ici_data: int
    ici_fsdp: int
    ici_sequence: int
    ici_tensor: int
    dcn_data: int
    dcn_fsdp: int
    dcn_sequence: int
    dcn_tensor: int
    rules: tuple[tuple[str, tuple[str, ...]], ...]
    collective_matmul: bool
    vocab_parallel_loss: bool


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How the processes of a multi-host run find each other (all null: ask the launcher, or run alone)."""

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    initialization_timeout_s: int
    heartbeat_timeout_s: int


@dataclasses.dataclass(frozen=True)
class HardwareConfig:
    """The machine an experiment is meant for: what `meshtrain compile` targets and launch recipes ask for."""

    kind: str
    topology: str | None
    num_slices: int
    chips: int | None


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking beyond the run directory's own records (metrics.jsonl, TensorBoard)."""

    wandb: bool
    wandb_project: str
    wandb_entity: str | None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole run. `model` is filled from a preset (configs/model/) and then overridden."""

    name: str
    run_dir: str | None
    seed: int
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    spike: SpikeConfig
    optimizer: OptimizerConfig
    checkpoint: CheckpointConfig
    mesh: MeshConfig
    distributed: DistributedConfig
    hardware: HardwareConfig
    tracking: TrackingConfig


# The sections whose change makes an existing run directory a different run (resuming it with
# other values would silently train a different model on different data).
RUN_IDENTITY_SECTIONS = ("seed", "model", "data", "optimizer")
