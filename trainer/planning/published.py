"""The performance model against what was published: configs/published_runs.yaml, read, predicted and
compared (`meshtrain plan --validate`, tests/test_plan.py, BENCHMARKS.md "Predicted against published").

Each row's published figure (an MFU, TFLOP/s per chip or tokens/s per chip, in the publisher's FLOPs
convention) is turned into tokens/s, and so is the prediction; the error is predicted / published - 1,
the same whether read as throughput or as MFU in the publisher's convention. Beside it stands the
baseline the model replaces: a constant MFU per hardware kind (configs/hardware.yaml's default_mfu,
PaLM convention), which is what `meshtrain cost` assumed before.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from meshtrain.model.config import REMAT_POLICIES
from meshtrain.sharding.mesh import MESH_AXES
from meshtrain.trainer.config.hardware import EfficiencyFamily, HardwareSpec, efficiency_family, hardware_spec
from meshtrain.trainer.config.loader import load_experiment
from meshtrain.trainer.config.paths import CONFIG_DIR
from meshtrain.trainer.config.presets import preset_names
from meshtrain.trainer.config.yamlio import read_yaml_mapping
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.planning.calibrate import Observation
from meshtrain.trainer.planning.flops import (
    megatron_core_flops_per_token,
    megatron_flops_per_token,
    model_flops_per_token,
)
from meshtrain.trainer.planning.peaks import memory_bandwidth, peak_flops
from meshtrain.trainer.planning.performance import ATTENTION_KERNELS, Layout, StepPrediction, Workload, predict_step

PUBLISHED_RUNS_YAML = CONFIG_DIR / "published_runs.yaml"
# Conventions only publishers use, each with its own count; the rest are flops.FLOPS_CONVENTIONS.
_PUBLISHER_COUNTS = {"megatron": megatron_flops_per_token, "megatron_core": megatron_core_flops_per_token}
PUBLISHER_CONVENTIONS = ("palm", "causal", "6nd", *_PUBLISHER_COUNTS)
# Layout's, false unless a row says true.
_LAYOUT_FLAGS = (
    "optimizer_sharded",
    "collective_matmul",
    "fused_accumulation",
    "eager_cross_entropy",
    "sequence_parallel",
    "dropout",
)
_FIGURES = ("mfu", "tflops_per_chip", "tokens_per_s_per_chip")
ROW_KEYS = (  # what a row of published_runs.yaml may say (its header documents each)
    *("name", "source", "hardware", "model", "seq_len", "batch", "mesh", "microbatches", "remat", "attention"),
    *("pipeline", "pipeline_virtual", *_LAYOUT_FLAGS, "held_out", "published"),
)


@dataclasses.dataclass(frozen=True)
class PublishedRun:
    """One row of published_runs.yaml, resolved: the workload, its layout and the published figure."""

    name: str
    source: str
    spec: HardwareSpec
    work: Workload
    layout: Layout
    figure: str  # one of _FIGURES
    value: float
    convention: str
    held_out: bool = False  # kept out of the family fit (benchmarks/fit_efficiency_families.py)

    def flops_per_token(self) -> float:
        """FLOPs per token in the publisher's convention."""
        if self.convention in _PUBLISHER_COUNTS:
            return _PUBLISHER_COUNTS[self.convention](self.work.model, self.work.seq_len)
        return model_flops_per_token(self.work.model, self.work.seq_len, self.convention)

    @property
    def peak(self) -> float:
        return peak_flops(self.spec, "bfloat16")

    def published_tokens_per_s_per_chip(self) -> float:
        if self.figure == "tokens_per_s_per_chip":
            return self.value
        flops = self.value * self.peak if self.figure == "mfu" else self.value * 1e12
        return flops / self.flops_per_token()

    def published_mfu(self) -> float:
        """The published figure as a fraction of peak, in the publisher's convention."""
        return self.published_tokens_per_s_per_chip() * self.flops_per_token() / self.peak


@dataclasses.dataclass(frozen=True)
class Comparison:
    run: PublishedRun
    prediction: StepPrediction
    predicted_mfu: float  # in the publisher's convention
    published_mfu: float
    error: float  # predicted / published - 1
    baseline_error: float  # the kind's default_mfu as the prediction


def _count(value: Any, key: str, where: str) -> int:
    """A row's size or count: a positive whole number (YAML's true is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key}={value!r}, expected a positive whole number")
    return value


def _flag(value: Any, key: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key}={value!r}, expected true or false")
    return value


def _layout(row: Mapping[str, Any], mesh: Any, where: str) -> Layout:
    """The row's mesh, microbatching, remat, attention and pipeline as a Layout (remat and attention
    already checked)."""
    if not isinstance(mesh, Mapping):
        raise ConfigError(f"{where}: mesh={mesh!r}, expected a mapping such as {{ici_fsdp: 8, dcn_data: 2}}")
    unknown = [k for k in mesh if not (isinstance(k, str) and k[:4] in ("ici_", "dcn_") and k[4:] in MESH_AXES)]
    if unknown:
        raise ConfigError(f"{where}: mesh.{unknown[0]}: expected ici_ or dcn_ + one of {', '.join(MESH_AXES)}")
    return Layout(
        ici={a: _count(mesh.get(f"ici_{a}", 1), f"mesh.ici_{a}", where) for a in MESH_AXES},
        dcn={a: _count(mesh.get(f"dcn_{a}", 1), f"mesh.dcn_{a}", where) for a in MESH_AXES},
        microbatches=_count(row.get("microbatches", 1), "microbatches", where),
        remat=row["remat"],
        attention=row["attention"],
        pipeline=_count(row.get("pipeline", 1), "pipeline", where),
        pipeline_virtual=_count(row.get("pipeline_virtual", 1), "pipeline_virtual", where),
        **{flag: _flag(row.get(flag, False), flag, where) for flag in _LAYOUT_FLAGS},
    )


def _figure(published: Any, where: str) -> tuple[str, float, str]:
    """(figure, value, convention) of a row's `published` mapping."""
    if not isinstance(published, Mapping):
        published = {}
    figures = [k for k in _FIGURES if k in published]
    convention = published.get("convention")
    if len(figures) != 1 or convention not in PUBLISHER_CONVENTIONS:
        raise ConfigError(
            f"{where}: published: expected one of {', '.join(_FIGURES)} and a convention "
            f"({', '.join(PUBLISHER_CONVENTIONS)})"
        )
    value = published[figures[0]]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{where}: published.{figures[0]}={value!r}, expected a positive number")
    return figures[0], float(value), str(convention)


def _check_run(run: PublishedRun, where: str) -> None:
    """What a run that happened must satisfy: its batch splits evenly over its replicas and
    microbatches, its sequence over the sequence axis, its ICI axes fit one slice or server, and
    its published figure is not faster than the chip's peak."""
    layout, work = run.layout, run.work
    parts = layout.size("data") * layout.size("fsdp") * layout.microbatches
    if work.batch % parts:
        raise ConfigError(
            f"{where}: batch={work.batch} does not split evenly over {layout.size('data') * layout.size('fsdp')} "
            f"data x fsdp replicas x {layout.microbatches} microbatches: a multiple of {parts} would"
        )
    if work.seq_len % layout.size("sequence"):
        raise ConfigError(
            f"{where}: seq_len={work.seq_len} does not split over {layout.size('sequence')} sequence shards"
        )
    inside = math.prod(layout.ici[a] for a in MESH_AXES)
    domain = run.spec.ici_chips_max or 1
    if inside > domain:
        raise ConfigError(
            f"{where}: the ici_ axes join {inside} chips, but one {run.spec.kind} slice or server links at most "
            f"{domain} (hardware.yaml ici_chips_max): put the rest in dcn_ axes"
        )
    mfu = run.published_mfu()
    if mfu > 1:
        raise ConfigError(
            f"{where}: published {run.figure}={run.value:g} is {mfu:.0%} of {run.spec.kind}'s peak "
            f"in the {run.convention} convention: faster than the chip can run"
        )


def _row(row: Any, models: Mapping[str, Any], sources: Mapping[str, str], where: str) -> PublishedRun:
    if not isinstance(row, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(ROW_KEYS)}")

    def need(key):
        if key not in row:
            raise ConfigError(f"{where}: missing {key}")
        return row[key]

    unknown = [key for key in row if key not in ROW_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (a row may say: {', '.join(ROW_KEYS)})")
    model_key, source = need("model"), need("source")
    if model_key not in models and model_key not in preset_names():
        raise ConfigError(
            f"{where}: model={model_key!r} is neither under models: ({', '.join(models)}) "
            f"nor a model preset ({', '.join(preset_names())})"
        )
    if source not in sources:
        raise ConfigError(f"{where}: source={source!r} is not under sources: ({', '.join(sources)})")
    fields = models.get(model_key, {"preset": model_key})
    if not isinstance(fields, Mapping) or "preset" not in fields:
        raise ConfigError(f"{where}: models.{model_key}: expected a mapping with a preset and model fields")
    fields = dict(fields)
    seq_len = _count(row.get("seq_len", 2048), "seq_len", where)
    overrides = [f"model={fields.pop('preset')}", f"data.seq_len={seq_len}"]
    overrides += [f"model.{k}={v}" for k, v in fields.items()]
    overrides.append(f"model.max_seq_len={max(seq_len, int(fields.get('max_seq_len', seq_len)))}")
    cfg = load_experiment(None, overrides)
    for key, allowed in (("remat", REMAT_POLICIES), ("attention", ATTENTION_KERNELS)):
        if need(key) not in allowed:
            raise ConfigError(f"{where}: {key}={row[key]!r}, expected one of {', '.join(allowed)}")
    layout = _layout(row, need("mesh"), where)
    figure, value, convention = _figure(need("published"), where)
    run = PublishedRun(
        name=str(need("name")),
        source=sources[source],
        spec=hardware_spec(str(need("hardware"))),
        work=Workload(model=cfg.model, seq_len=seq_len, batch=_count(need("batch"), "batch", where)),
        layout=layout,
        figure=figure,
        value=value,
        convention=convention,
        held_out=_flag(row.get("held_out", False), "held_out", where),
    )
    _check_run(run, where)
    return run


def published_runs(path: str | os.PathLike | None = None) -> list[PublishedRun]:
    """Every row of configs/published_runs.yaml (or of `path`, a file laid out the same way: its own
    sources, models and runs); a malformed row is a ConfigError naming it."""
    path = path or PUBLISHED_RUNS_YAML
    raw = read_yaml_mapping(path)
    models, sources = raw.get("models") or {}, raw.get("sources") or {}
    for key, value in (("models", models), ("sources", sources)):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: {key}: expected a mapping of name -> entry (see {PUBLISHED_RUNS_YAML})")
    runs = raw.get("runs") or []
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{path}: runs: expected a list of at least one run (see {PUBLISHED_RUNS_YAML})")
    rows, names = [], {}
    for i, row in enumerate(runs):
        run = _row(row, models, sources, f"{path}: runs[{i}]")
        if run.name in names:
            raise ConfigError(
                f"{path}: runs[{i}]: name {run.name!r} is runs[{names[run.name]}]'s too: give each run its own"
            )
        names[run.name] = i
        rows.append(run)
    return rows


def observation(run: PublishedRun) -> Observation:
    """The run as a measured step for calibrate.fit_family: its published throughput as seconds per step."""
    tokens_per_s = run.published_tokens_per_s_per_chip() * run.layout.chips
    return Observation(
        run.work,
        run.layout,
        run.spec,
        run.peak,
        memory_bandwidth(run.spec),
        run.work.batch * run.work.seq_len / tokens_per_s,
        run.name,
    )


def compare(run: PublishedRun, families: Mapping[str, EfficiencyFamily] | None = None) -> Comparison:
    """The model's prediction for `run` beside what was published (and the constant-MFU baseline)."""
    family = (families or {}).get(run.spec.efficiency_family) or efficiency_family(run.spec)
    prediction = predict_step(run.work, run.layout, run.spec, family, run.peak, memory_bandwidth(run.spec))
    published = run.published_tokens_per_s_per_chip()
    predicted = prediction.tokens_per_s / run.layout.chips
    baseline = run.spec.default_mfu * run.peak / model_flops_per_token(run.work.model, run.work.seq_len, "palm")
    return Comparison(
        run=run,
        prediction=prediction,
        predicted_mfu=predicted * run.flops_per_token() / run.peak,
        published_mfu=run.published_mfu(),
        error=predicted / published - 1,
        baseline_error=baseline / published - 1,
    )


@dataclasses.dataclass(frozen=True)
class Summary:
    count: int
    median_abs_error: float
    worst_abs_error: float
    worst_run: str
    baseline_median_abs_error: float
    baseline_worst_abs_error: float


def summarize(comparisons: Sequence[Comparison]) -> Summary:
    errors = [abs(c.error) for c in comparisons]
    worst = max(comparisons, key=lambda c: abs(c.error))
    baseline = [abs(c.baseline_error) for c in comparisons]
    return Summary(
        count=len(comparisons),
        median_abs_error=statistics.median(errors),
        worst_abs_error=max(errors),
        worst_run=worst.run.name,
        baseline_median_abs_error=statistics.median(baseline),
        baseline_worst_abs_error=max(baseline),
    )
