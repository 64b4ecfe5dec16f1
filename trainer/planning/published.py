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
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from meshtrain.model.config import REMAT_POLICIES
from meshtrain.sharding.mesh import MESH_AXES
from meshtrain.trainer.config.hardware import EfficiencyFamily, HardwareSpec, efficiency_family, hardware_spec
from meshtrain.trainer.config.loader import load_experiment
from meshtrain.trainer.config.paths import CONFIG_DIR
from meshtrain.trainer.config.yamlio import read_yaml_mapping
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.planning.calibrate import Observation
from meshtrain.trainer.planning.flops import megatron_flops_per_token, model_flops_per_token
from meshtrain.trainer.planning.peaks import memory_bandwidth, peak_flops
from meshtrain.trainer.planning.performance import ATTENTION_KERNELS, Layout, StepPrediction, Workload, predict_step

PUBLISHED_RUNS_YAML = CONFIG_DIR / "published_runs.yaml"
PUBLISHER_CONVENTIONS = ("palm", "causal", "6nd", "megatron")
_FIGURES = ("mfu", "tflops_per_chip", "tokens_per_s_per_chip")
ROW_KEYS = (  # what a row of published_runs.yaml may say (its header documents each)
    *("name", "source", "hardware", "model", "seq_len", "batch", "mesh", "microbatches", "remat", "attention"),
    *("pipeline", "pipeline_virtual", "optimizer_sharded", "held_out", "published"),
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
        if self.convention == "megatron":
            return megatron_flops_per_token(self.work.model, self.work.seq_len)
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


def _row(row: Mapping[str, Any], models: Mapping[str, Any], sources: Mapping[str, str], where: str) -> PublishedRun:
    def need(key):
        if key not in row:
            raise ConfigError(f"{where}: missing {key}")
        return row[key]

    unknown = [key for key in row if key not in ROW_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (a row may say: {', '.join(ROW_KEYS)})")
    model_key, source = need("model"), need("source")
    if model_key not in models:
        raise ConfigError(f"{where}: model={model_key!r} is not under models: ({', '.join(models)})")
    if source not in sources:
        raise ConfigError(f"{where}: source={source!r} is not under sources: ({', '.join(sources)})")
    fields = dict(models[model_key])
    seq_len = int(row.get("seq_len", 2048))
    overrides = [f"model={fields.pop('preset')}", f"data.seq_len={seq_len}"]
    overrides += [f"model.{k}={v}" for k, v in fields.items()]
    overrides.append(f"model.max_seq_len={max(seq_len, int(fields.get('max_seq_len', seq_len)))}")
    cfg = load_experiment(None, overrides)
    mesh = dict(need("mesh"))
    unknown = [k for k in mesh if not (k.startswith(("ici_", "dcn_")) and k[4:] in MESH_AXES)]
    if unknown:
        raise ConfigError(f"{where}: mesh.{unknown[0]}: expected ici_ or dcn_ + one of {', '.join(MESH_AXES)}")
    for key, allowed in (("remat", REMAT_POLICIES), ("attention", ATTENTION_KERNELS)):
        if need(key) not in allowed:
            raise ConfigError(f"{where}: {key}={row[key]!r}, expected one of {', '.join(allowed)}")
    layout = Layout(
        ici={a: int(mesh.get(f"ici_{a}", 1)) for a in MESH_AXES},
        dcn={a: int(mesh.get(f"dcn_{a}", 1)) for a in MESH_AXES},
        microbatches=int(row.get("microbatches", 1)),
        remat=str(need("remat")),
        attention=str(need("attention")),
        pipeline=int(row.get("pipeline", 1)),
        pipeline_virtual=int(row.get("pipeline_virtual", 1)),
        optimizer_sharded=bool(row.get("optimizer_sharded", False)),
    )
    published = dict(need("published"))
    figures = [k for k in _FIGURES if k in published]
    convention = published.get("convention")
    if len(figures) != 1 or convention not in PUBLISHER_CONVENTIONS:
        raise ConfigError(
            f"{where}: published: expected one of {', '.join(_FIGURES)} and a convention "
            f"({', '.join(PUBLISHER_CONVENTIONS)})"
        )
    work = Workload(model=cfg.model, seq_len=seq_len, batch=int(need("batch")))
    return PublishedRun(
        name=str(need("name")),
        source=sources[source],
        spec=hardware_spec(str(need("hardware"))),
        work=work,
        layout=layout,
        figure=figures[0],
        value=float(published[figures[0]]),
        convention=str(convention),
        held_out=bool(row.get("held_out", False)),
    )


def published_runs(path: str | os.PathLike | None = None) -> list[PublishedRun]:
    """Every row of configs/published_runs.yaml (or of `path`, a file laid out the same way: its own
    sources, models and runs); a malformed row is a ConfigError naming it."""
    path = path or PUBLISHED_RUNS_YAML
    raw = read_yaml_mapping(path)
    models, sources = raw.get("models") or {}, raw.get("sources") or {}
    runs = raw.get("runs") or []
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{path}: runs: expected a list of at least one run (see {PUBLISHED_RUNS_YAML})")
    return [_row(row, models, sources, f"{path}: runs[{i}]") for i, row in enumerate(runs)]


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
