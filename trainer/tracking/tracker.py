"""The live tracker of `meshtrain train`: throughput, MFU, HFU, dollars and ETA at every logged step,
the goodput record, and the run report at the end.

The arithmetic is trainer/planning's (the one `meshtrain cost` uses), under the palm convention:

    model_tflops_per_chip = model FLOPs per token x tokens/s / chips / 1e12
    mfu = model FLOPs per token x tokens/s / (chips x peak FLOP/s per chip);  hfu: hardware FLOPs
    cost_usd = chip-hours so far (wall time of every process of the run x its chips) x on-demand price
    eta_s = tokens left to train.steps (through the batch ramp) / recent tokens/s
    projected_cost_usd = cost_usd + eta_s x chips x price

Peak and price are those of hardware.kind (configs/hardware.yaml), the chips those the run really has:
jax.device_count(), except on `cpu`, whose peak is the whole machine's (measured once by a matmul
benchmark on all cores, and cached): there a chip is a process's CPU, however many devices XLA splits
it into. `cpu` has no price: cost fields are null. Only the loop's existing syncs (log steps) are
waited on. Process 0 alone measures, writes and reports; elsewhere the tracker only times intervals.
"""

from __future__ import annotations

import collections
import contextlib
import time

import jax
from etils import epath

from meshtrain.trainer.config.batch_schedule import batch_size_at, tokens_through
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.formatting import format_dollars, format_duration, format_percent
from meshtrain.trainer.planning.flops import utilization
from meshtrain.trainer.storage.paths import as_path
from meshtrain.trainer.tracking.goodput import Goodput, load_record
from meshtrain.trainer.tracking.metrics_log import read_metrics
from meshtrain.trainer.tracking.report import write_report
from meshtrain.trainer.tracking.run_arithmetic import run_arithmetic

_ETA_WINDOW = 5  # logged intervals whose throughput predicts the rest


class Tracker:
    """Called by the loop: begin() before the first step, timed(part) around data waits, evaluation
    and checkpointing, step_done() after each step, log() at log steps (after the loop has synced),
    save_point() after a checkpoint, finish() when the loop ends."""

    def __init__(self, cfg: ExperimentConfig, run_dir: epath.Path, *, primary: bool, started_at: float):
        self.cfg = cfg
        self.run_dir = as_path(run_dir)
        self.primary = primary
        self.arithmetic = run_arithmetic(cfg) if primary else None
        chips = self.arithmetic.chips if primary else jax.device_count()
        self.goodput = Goodput(run_dir, started_at, chips, cfg.hardware.kind, persist=primary)
        self.tokens_total = tokens_through(cfg.train, cfg.data.seq_len, cfg.train.steps)
        self._recent = collections.deque(maxlen=_ETA_WINDOW)  # (tokens, seconds) of recent intervals
        self._first_busy: float | None = None  # the first step's time, until a typical step is known
        self._steps_done = 0
        self._start = 0
        self._open_interval()

    def begin(self, start_step: int) -> None:
        self._start = self._steps_done = start_step
        self.goodput.begin(start_step, read_metrics(self.run_dir) if self.primary else [])
        self._open_interval()

    def _open_interval(self) -> None:
        self._interval_start = time.perf_counter()
        self._interval_tokens, self._interval_steps = 0, 0
        self._interval_wait, self._interval_side = 0.0, 0.0

    @contextlib.contextmanager
    def timed(self, part: str):
        """Counts the block's time as `part` (data_wait, evaluation or checkpointing); outside data
        waits it is also taken out of the current interval's step time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.goodput.add(part, seconds)
            if part == "data_wait":
                self._interval_wait += seconds
            else:
                self._interval_side += seconds

    def step_done(self, step: int) -> None:
        self._interval_tokens += batch_size_at(self.cfg.train, step) * self.cfg.data.seq_len
        self._interval_steps += 1
        self._steps_done = step + 1

    def log(self, step: int) -> dict:
        """Closes the interval since the last log (the loop has just synced with the device) and
        returns its metrics: tokens/s and step time, and on process 0 the utilization and money."""
        elapsed = time.perf_counter() - self._interval_start - self._interval_side
        tokens, steps = self._interval_tokens, max(self._interval_steps, 1)
        tokens_per_sec = tokens / elapsed
        record = {"tokens_per_sec": tokens_per_sec, "step_time_s": elapsed / steps}
        busy = elapsed - self._interval_wait
        first_interval = step == self._start
        if first_interval:  # compile + one step: all compilation until a typical step is seen
            self._first_busy = busy
            self.goodput.add("compilation", busy)
        else:
            if self._first_busy is not None:
                typical = min(busy / steps, self._first_busy)
                self.goodput.add("compilation", -typical)
                self.goodput.add("productive", typical)
                self._first_busy = None
            self.goodput.add("productive", busy)
            self._recent.append((tokens, elapsed))
        self._open_interval()
        if self.primary:
            record.update(self._money_and_utilization(tokens_per_sec, step))
        return record

    def _money_and_utilization(self, tokens_per_sec: float, step: int) -> dict:
        a, mfu, hfu = self.arithmetic, None, None
        if a.peak_flops_per_chip is not None:
            mfu = utilization(a.model_flops_per_token, tokens_per_sec, a.chips, a.peak_flops_per_chip)
            hfu = utilization(a.hardware_flops_per_token, tokens_per_sec, a.chips, a.peak_flops_per_chip)
        goodput = self.goodput.save(step + 1)
        chip_hours = goodput["chip_seconds"] / 3600.0
        recent_tokens, recent_seconds = map(sum, zip(*self._recent)) if self._recent else (0, 0.0)
        recent = recent_tokens / recent_seconds if recent_seconds > 0 else tokens_per_sec
        remaining = self.tokens_total - tokens_through(self.cfg.train, self.cfg.data.seq_len, step + 1)
        eta = max(remaining, 0) / recent
        price = a.price_per_chip_hour
        return {
            "model_tflops_per_chip": a.model_flops_per_token * tokens_per_sec / a.chips / 1e12,
            "mfu": mfu,
            "hfu": hfu,
            "chip_hours": chip_hours,
            "cost_usd": None if price is None else chip_hours * price,
            "projected_cost_usd": None if price is None else (chip_hours + eta * a.chips / 3600.0) * price,
            "eta_s": eta,
        }

    @staticmethod
    def postfix(record: dict) -> dict:
        """The progress bar's fields: loss, tok/s, MFU, cost in $ (when priced), ETA."""
        fields = {"loss": f"{record['loss']:.3f}", "tok/s": f"{record['tokens_per_sec']:,.0f}"}
        if "eta_s" in record:
            if record["mfu"] is not None:
                fields["MFU"] = format_percent(record["mfu"])
            if record["cost_usd"] is not None:
                fields["cost"] = format_dollars(record["cost_usd"])
            fields["ETA"] = format_duration(record["eta_s"])
        return fields

    def save_point(self) -> None:
        """After a checkpoint: the goodput record on disk matches it."""
        if self.primary:
            self.goodput.save(self._steps_done)

    def finish(self, *, status: str = "finished") -> epath.Path | None:
        """Writes report.json, report.md and the plots (process 0); returns report.md's path.
        `status`: finished, interrupted (a signal; resumable), diverged or failed."""
        if not self.primary:
            return None
        return write_report(self.run_dir, self.cfg, self.arithmetic, self.goodput.save(self._steps_done), status=status)

    def report_again(self, steps_done: int) -> epath.Path | None:
        """The report of a finished run whose process died before writing it, from the run's own
        records (goodput.json, metrics.jsonl): this process's few seconds are not added to it."""
        if not self.primary:
            return None
        goodput = load_record(self.run_dir) or self.goodput.snapshot(steps_done)
        return write_report(self.run_dir, self.cfg, self.arithmetic, goodput, status="finished")

    def redo(self, start: int, end: int) -> dict:
        """A rewind will compute steps start..end-1 again: their time moves from productive to restart
        loss. Returns what they cost: redone_flops (model FLOPs) and cost_usd (None when unpriced)."""
        step_seconds = self.typical_step_time()
        self.goodput.redo(end - start, step_seconds)
        a = self.arithmetic
        if a is None:  # not process 0: it records nothing
            return {"redone_flops": 0.0, "cost_usd": None}
        tokens = tokens_through(self.cfg.train, self.cfg.data.seq_len, end) - tokens_through(
            self.cfg.train, self.cfg.data.seq_len, start
        )
        price = a.price_per_chip_hour
        dollars = None if price is None else (end - start) * step_seconds * a.chips / 3600.0 * price
        return {"redone_flops": a.model_flops_per_token * tokens, "cost_usd": dollars}

    def typical_step_time(self) -> float:
        """Seconds of a step at the current batch size, from the recent logged intervals (0: none yet)."""
        tokens, seconds = map(sum, zip(*self._recent)) if self._recent else (0, 0.0)
        steps_tokens = batch_size_at(self.cfg.train, self._steps_done) * self.cfg.data.seq_len
        return seconds / tokens * steps_tokens if tokens else 0.0
