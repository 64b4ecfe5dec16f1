"""Value checks on a typed ExperimentConfig: ranges, choices and cross-field rules.

They run on every config any front door produces (YAML, gin, a run directory's config.yaml), so an
impossible setting stops the run before a directory is created or a step is compiled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from meshtrain.model import config as model_config
from meshtrain.trainer.config.batch_schedule import splits_into_microbatches
from meshtrain.trainer.config.errors_fmt import did_you_mean, show
from meshtrain.trainer.config.hardware import TOPOLOGY_WANT, chips_in_topology, hardware_kinds, hardware_spec
from meshtrain.trainer.config.schema import OPTIMIZERS, SCHEDULES, SPIKE_WINDOW_SLOTS, ExperimentConfig
from meshtrain.trainer.errors import ConfigError

_positive = (lambda v: v >= 1, "a positive integer")
_non_negative = (lambda v: v >= 0, "an integer >= 0")
_non_empty = (lambda v: bool(v.strip()), "a non-empty string")
_unit = (lambda v: 0 <= v < 1, "a number in [0, 1)")

# dotted key -> (predicate, what would be valid). None values of `X | None` fields are not checked.
RANGES: dict[str, tuple[Callable[[object], bool], str]] = {
    "name": _non_empty,
    "run_dir": _non_empty,
    "seed": _non_negative,
    "data.dataset": _non_empty,
    "data.text_dir": _non_empty,
    "data.text_key": _non_empty,
    "data.data_dir": _non_empty,
    "data.train_split": _non_empty,
    "data.eval_split": _non_empty,
    "data.eval_fraction": _unit,
    "data.tokenizer": _non_empty,
    "data.seq_len": _positive,
    "data.shards": (lambda v: v >= -1, "0 (from the batch sizes), -1 (one per process) or a positive integer"),
    "data.prefetch": _non_negative,
    "train.steps": _positive,
    "train.batch_size": _positive,
    "train.microbatches": _positive,
    "train.microbatch_size": _non_negative,
    "train.log_every": _positive,
    "train.eval_every": (lambda v: v >= 0, "an integer >= 0 (0 = never)"),
    "train.eval_batches": _positive,
    "train.profile_start": _non_negative,
    "train.profile_steps": _non_negative,
    "train.watchdog_s": (lambda v: v >= 0, "a number of seconds >= 0 (0 = derived from the step time)"),
    "spike.window": (
        lambda v: v == 0 or 2 <= v <= SPIKE_WINDOW_SLOTS,
        f"0 (no spike check) or 2..{SPIKE_WINDOW_SLOTS}",
    ),
    "spike.factor": (lambda v: v > 0, "a positive number"),
    "spike.min_jump": (lambda v: v >= 0, "a number >= 0"),
    "spike.max_consecutive": _positive,
    "spike.rewind_steps": _non_negative,
    "spike.skip_batches": _non_negative,
    "spike.max_rewinds": _non_negative,
    "optimizer.learning_rate": (lambda v: v > 0, "a positive number"),
    "optimizer.warmup_steps": _non_negative,
    "optimizer.decay_steps": _positive,
    "optimizer.min_lr_ratio": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "optimizer.b1": _unit,
    "optimizer.b2": _unit,
    "optimizer.eps": (lambda v: v > 0, "a positive number"),
    "optimizer.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "optimizer.grad_clip": (lambda v: v >= 0, "a number >= 0 (0 = no clipping)"),
    "optimizer.adafactor_decay_rate": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "checkpoint.every": _positive,
    "checkpoint.keep": (lambda v: v >= 1, "an integer >= 1 (the latest checkpoint is always kept)"),
    "checkpoint.keep_every": _positive,
    "checkpoint.every_minutes": (lambda v: v >= 0, "a number of minutes >= 0 (0 = step-based only)"),
    "distributed.num_processes": _positive,
    "distributed.process_id": _non_negative,
    "distributed.initialization_timeout_s": (lambda v: v >= 1, "a number of seconds >= 1"),
    "distributed.heartbeat_timeout_s": (lambda v: v >= 2, "a number of seconds >= 2"),
    "hardware.num_slices": _positive,
    "hardware.chips": _positive,
    **{
        f"mesh.{net}_{axis}": (lambda v: v == -1 or v >= 1, "-1 (fill with the devices left) or an integer >= 1")
        for net in ("ici", "dcn")
        for axis in ("data", "fsdp", "sequence", "tensor")
    },
}

# dotted key -> the allowed values, or a function returning them (read from a shipped file when needed).
CHOICES: dict[str, tuple[str, ...] | Callable[[], tuple[str, ...]]] = {
    "optimizer.name": OPTIMIZERS,
    "optimizer.schedule": SCHEDULES,
    "model.block": model_config.BLOCKS,
    "model.mlp": model_config.MLPS,
    "model.norm": model_config.NORMS,
    "model.positions": model_config.POSITIONS,
    "model.remat": model_config.REMAT_POLICIES,
    "model.dtype": model_config.DTYPES,
    "model.param_dtype": model_config.DTYPES[1:],
    "model.attention": model_config.ATTENTION,
    "hardware.kind": hardware_kinds,
}


def _choices(key: str) -> tuple[str, ...]:
    allowed = CHOICES[key]
    return allowed() if callable(allowed) else allowed


def _get(cfg: ExperimentConfig, key: str) -> object:
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _problem(key: str, value: object, want: str, sources: Mapping[str, str]) -> str:
    where = f", from {sources[key]}" if key in sources else ""
    hint = did_you_mean(value, _choices(key)) if key in CHOICES and isinstance(value, str) else ""
    return f"{key}={show(value)}{where}: expected {want}{hint}"


def config_problems(cfg: ExperimentConfig, sources: Mapping[str, str] = {}) -> list[str]:
    """Every invalid value as one line naming key, value, origin and what would be valid."""
    problems = []
    for key, (ok, want) in RANGES.items():
        value = _get(cfg, key)
        if value is not None and not ok(value):
            problems.append(_problem(key, value, want, sources))
    for key in CHOICES:
        value, allowed = _get(cfg, key), _choices(key)
        if value not in allowed and not key.startswith("model."):
            problems.append(_problem(key, value, f"one of {', '.join(allowed)}", sources))
    for key, value, want in model_config.model_config_errors(cfg.model):
        problems.append(_problem(f"model.{key}", value, want, sources))
    problems.extend(_cross_field_problems(cfg, sources))
    return problems


def _cross_field_problems(cfg: ExperimentConfig, sources: Mapping[str, str]) -> list[str]:
    """Rules that tie two fields together; each message names both."""
    out = []
    train, micro = cfg.train, cfg.train.microbatches
    if train.microbatch_size and micro != 1:
        out.append(
            _problem(
                "train.microbatch_size",
                train.microbatch_size,
                f"0 when train.microbatches={micro} is set (give one of the two)",
                sources,
            )
        )
    rule = (
        f"a multiple of train.microbatch_size={train.microbatch_size} (or smaller than it)"
        if train.microbatch_size
        else f"a multiple of train.microbatches={micro}"
    )
    splits = lambda size: size >= 1 and splits_into_microbatches(train, size)
    if not splits(train.batch_size):
        out.append(_problem("train.batch_size", train.batch_size, rule, sources))
    previous = 0
    for i, (step, size) in enumerate(train.batch_ramp):
        entry = f"train.batch_ramp[{i}]=[{step}, {size}]"
        if step <= previous:
            out.append(f"{entry}: steps must be positive and strictly increasing (expected a step > {previous})")
        if not splits(size):
            out.append(f"{entry}: expected a positive batch size, {rule}")
        previous = max(previous, step)
    for i, (start, end) in enumerate(train.skip_batches):
        if not 0 <= start < end:
            out.append(
                f"train.skip_batches[{i}]=[{start}, {end}]: expected [start, end] with 0 <= start < end "
                "(global batch numbers start..end-1 are skipped)"
            )
    if cfg.model.positions == "learned" and cfg.data.seq_len > cfg.model.max_seq_len:
        out.append(
            _problem(
                "data.seq_len",
                cfg.data.seq_len,
                f"at most model.max_seq_len={cfg.model.max_seq_len} (learned positions have that many rows)",
                sources,
            )
        )
    if cfg.data.dataset == "local_text" and cfg.data.text_dir is None and not cfg.data.mixture:
        out.append(
            _problem("data.text_dir", None, "a directory of .txt/.jsonl files when data.dataset=local_text", sources)
        )
    out.extend(_data_problems(cfg, sources))
    opt = cfg.optimizer
    if opt.schedule == "cosine" and opt.decay_steps is not None and opt.decay_steps <= opt.warmup_steps:
        out.append(
            _problem(
                "optimizer.decay_steps",
                opt.decay_steps,
                f"more than optimizer.warmup_steps={opt.warmup_steps}",
                sources,
            )
        )
    dist = cfg.distributed
    if (
        dist.process_id is not None
        and dist.num_processes is not None
        and dist.num_processes >= 1
        and dist.process_id >= dist.num_processes
    ):
        out.append(
            _problem(
                "distributed.process_id",
                dist.process_id,
                f"less than distributed.num_processes={dist.num_processes} "
                f"(processes are numbered 0..{dist.num_processes - 1})",
                sources,
            )
        )
    out.extend(_hardware_problems(cfg, sources))
    return out


def _data_problems(cfg: ExperimentConfig, sources: Mapping[str, str]) -> list[str]:
    """The mixture, its schedule and a fixed shard count against the batch sizes."""
    out, data = [], cfg.data
    if data.shards >= 1:
        for size in dict.fromkeys((cfg.train.batch_size, *(s for _, s in cfg.train.batch_ramp))):
            if size % data.shards:
                out.append(
                    _problem(
                        "data.shards",
                        data.shards,
                        f"a divisor of every batch size (batch size {size} is not "
                        "a multiple), or 0 to derive it from the batch sizes",
                        sources,
                    )
                )
                break
    names = []
    for i, source in enumerate(data.mixture):
        entry = f"data.mixture[{i}] ({source.name or source.dataset})"
        if not source.dataset.strip():
            out.append(f"{entry}: dataset is empty; expected python_docs, python_source, local_text or a TFDS name")
        if not (math.isfinite(source.weight) and source.weight >= 0):
            out.append(f"{entry}: weight={source.weight} must be a number >= 0")
        if source.dataset == "local_text" and not (source.text_dir or data.text_dir):
            out.append(f"{entry}: a local_text source needs text_dir (its own, or data.text_dir)")
        names.append(source.name or source.dataset)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        out.append(
            f"data.mixture: sources named {', '.join(map(repr, repeated))} more than once: give each entry a distinct name"
        )
    if data.mixture and not sum(s.weight for s in data.mixture) > 0:
        out.append("data.mixture: every weight is 0; at least one source needs a positive weight")
    if data.mixture_schedule and not data.mixture:
        out.append("data.mixture_schedule is set but data.mixture is empty: a schedule changes the mixture's weights")
    previous = 0
    for i, (step, weights) in enumerate(data.mixture_schedule):
        entry = f"data.mixture_schedule[{i}]=[{step}, {list(weights)}]"
        if step <= previous:
            out.append(f"{entry}: steps must be positive and strictly increasing (expected a step > {previous})")
        previous = max(previous, step)
        if data.mixture and len(weights) != len(data.mixture):
            out.append(f"{entry}: expected {len(data.mixture)} weights, one per data.mixture entry")
        elif not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0:
            out.append(f"{entry}: weights must be numbers >= 0, at least one positive")
    return out


def _hardware_problems(cfg: ExperimentConfig, sources: Mapping[str, str]) -> list[str]:
    """hardware.topology must be a TPU topology of the kind's generation, and agree with chips."""
    hw = cfg.hardware
    if hw.topology is None or hw.kind not in hardware_kinds():
        return []
    spec = hardware_spec(hw.kind)
    if spec.platform != "tpu":
        return [
            _problem(
                "hardware.topology",
                hw.topology,
                f"null for hardware.kind={hw.kind} (a topology names a TPU slice; set hardware.chips instead)",
                sources,
            )
        ]
    try:
        chips = chips_in_topology(hw.topology)
    except ConfigError:
        return [_problem("hardware.topology", hw.topology, TOPOLOGY_WANT, sources)]
    prefix = hw.topology.split(":")[0] if ":" in hw.topology else None
    prefixes = (spec.tpu_topology_prefix, hw.kind.removeprefix("tpu-"))
    if prefix is not None and prefix not in prefixes:
        return [
            _problem(
                "hardware.topology",
                hw.topology,
                f"a {hw.kind} topology, named '{spec.tpu_topology_prefix}:AxBxC'",
                sources,
            )
        ]
    if hw.chips is not None and hw.num_slices >= 1 and hw.chips != chips * hw.num_slices:
        return [
            _problem(
                "hardware.chips",
                hw.chips,
                f"{chips * hw.num_slices} (hardware.topology="
                f"{hw.topology} has {chips} chips x hardware.num_slices={hw.num_slices}), "
                f"or null",
                sources,
            )
        ]
    return []


def check_config(cfg: ExperimentConfig, sources: Mapping[str, str] = {}) -> ExperimentConfig:
    """cfg unchanged, or ConfigError listing every problem on one line."""
    problems = config_problems(cfg, sources)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg
