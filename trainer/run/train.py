"""The training loop: from a resolved ExperimentConfig to a trained, checkpointed run directory.

Everything that can fail on bad input (dataset, tokenizer, a run directory holding another run,
a mesh or batch that does not split) fails before the run directory is written. The loop then only
waits on the device at logging, eval and checkpoint steps; batches are prepared ahead in a
background thread. The same code runs on one device, a mesh of many, or many processes: each
process feeds its own rows of the global batch, and process 0 alone writes logs and the config.
A Tracker (trainer/tracking/tracker.py) turns each logged interval into throughput, MFU, HFU, dollars and an
ETA, splits the wall time into goodput parts, and writes the run report when the loop ends or is
interrupted.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from meshtrain.trainer.config.batch_schedule import batch_size_at
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.data import BatchStream, prepare_dataset, tokenizer_for
from meshtrain.trainer.errors import DataError
from meshtrain.trainer.run.checkpoint import Checkpoints
from meshtrain.trainer.run.distributed import initialize
from meshtrain.trainer.run.prefetch import Prefetcher
from meshtrain.trainer.run.run_dir import check_same_run, open_run_dir, run_dir_path
from meshtrain.trainer.run.saved_weights import initial_weights_for, restore_params
from meshtrain.trainer.step.optimizer import learning_rate_schedule
from meshtrain.trainer.step.partition import (
    abstract_sharded_state,
    global_batch,
    init_sharded_state,
    jit_eval_step,
    jit_train_step,
    make_mesh,
    plan_run,
)
from meshtrain.trainer.step.state import model_def, optimizer_for
from meshtrain.trainer.tracking.metrics_log import MetricsLog
from meshtrain.trainer.tracking.tracker import Tracker


@dataclasses.dataclass
class RunSummary:
    run_dir: str
    start_step: int
    end_step: int
    first_loss: float | None = None
    last_loss: float | None = None
    last_eval_loss: float | None = None
    interrupted: bool = False
    report: str | None = None  # report.md, written by process 0 when the loop ends


class _StopRequest:
    """Turns SIGTERM/SIGINT into a request to checkpoint and exit at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _load_tokenizer(cfg: ExperimentConfig):
    tokenizer = tokenizer_for(cfg.data, cfg.model.vocab_size)
    if tokenizer.get_piece_size() > cfg.model.vocab_size:
        raise DataError(
            f"tokenizer has {tokenizer.get_piece_size()} pieces but model.vocab_size="
            f"{cfg.model.vocab_size}; raise model.vocab_size or use a smaller tokenizer"
        )
    return tokenizer


def evaluate(cfg: ExperimentConfig, tokenizer, eval_step, params, put) -> float:
    """Mean cross-entropy over the first `eval_batches` batches of the eval split (same ones each time)."""
    stream = BatchStream(cfg.data, tokenizer, seed=cfg.seed, split=cfg.data.eval_split)
    rows = cfg.train.batch_size // jax.process_count()
    ce_sum, tokens = 0.0, 0.0
    for _ in range(cfg.train.eval_batches):
        batch_ce, batch_tokens = eval_step(params, put(stream.next_batch(rows)))
        ce_sum, tokens = ce_sum + float(batch_ce), tokens + float(batch_tokens)
    return ce_sum / max(tokens, 1.0)


def _prepare_data(cfg: ExperimentConfig):
    """Process 0 builds the dataset and tokenizer (once, into the shared data_dir); the others
    wait for it, then every process opens them."""
    if jax.process_index() == 0:
        prepare_dataset(cfg.data)
        _load_tokenizer(cfg)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("meshtrain: dataset and tokenizer ready")
        prepare_dataset(cfg.data)
    return _load_tokenizer(cfg)


def _any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (a collective: call it on all of them)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.asarray(flag)).any())


def _initial_state(
    cfg: ExperimentConfig, mdef, optimizer, plan, abstract, initial_weights, tracker: Tracker, primary: bool
):
    """Step 0 of a new run: around the weights `checkpoint.init_from` names, or freshly initialized."""
    if initial_weights is None:
        return init_sharded_state(cfg, mdef, optimizer, plan)
    with tracker.timed("checkpointing"):
        params = restore_params(initial_weights, abstract["params"])
    if primary:
        print(f"initialized from {initial_weights.step_dir} (parameters only; fresh optimizer state)")
    return init_sharded_state(cfg, mdef, optimizer, plan, params)


def train(cfg: ExperimentConfig, *, progress: bool = True) -> RunSummary:
    started_at = time.perf_counter()
    initialize(cfg.distributed)
    primary = jax.process_index() == 0
    check_same_run(cfg, run_dir_path(cfg))
    tokenizer = _prepare_data(cfg)
    mdef = model_def(cfg)
    optimizer = optimizer_for(cfg, mdef)
    plan = plan_run(cfg, mdef, optimizer, make_mesh(cfg))
    run_dir = run_dir_path(cfg)
    initial_weights = initial_weights_for(cfg, run_dir)

    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.checkpoint)
    stream = BatchStream(cfg.data, tokenizer, seed=cfg.seed, split=cfg.data.train_split)
    tracker = Tracker(cfg, run_dir, primary=primary, started_at=started_at)
    abstract = abstract_sharded_state(cfg, mdef, optimizer, plan)
    with tracker.timed("checkpointing"):
        restored = checkpoints.restore_latest(abstract)
    if restored:
        start, state, data_state = restored
        stream.set_state(data_state)
    else:
        start, state = 0, _initial_state(cfg, mdef, optimizer, plan, abstract, initial_weights, tracker, primary)
    summary = RunSummary(str(run_dir), start, start)
    if start >= cfg.train.steps:  # nothing to do, and nothing of the run is rewritten
        print(
            f"{run_dir}: already trained for {start} steps (train.steps={cfg.train.steps}); "
            f"raise train.steps to continue"
        )
        checkpoints.close()
        return summary
    if primary:
        open_run_dir(cfg)  # the resolved config of what runs now (a resume may change the mesh)

    train_step = jit_train_step(cfg, mdef, optimizer, plan)
    eval_step = jit_eval_step(cfg, mdef, plan)
    put = lambda local_batch: global_batch(plan, local_batch)
    schedule = learning_rate_schedule(cfg.optimizer, cfg.train.steps)
    rows_at = lambda step: batch_size_at(cfg.train, step) // jax.process_count()
    prefetcher = Prefetcher(stream, rows_at, start, cfg.train.steps, cfg.data.prefetch, put)
    log = MetricsLog(run_dir) if primary else None
    bar = tqdm(
        total=cfg.train.steps,
        initial=start,
        desc=cfg.name,
        unit="step",
        disable=not (progress and primary),
        dynamic_ncols=True,
    )
    tracker.begin(start)

    try:
        with _StopRequest() as stop:
            for step in range(start, cfg.train.steps):
                with tracker.timed("data_wait"):
                    batch, data_state = prefetcher.next()
                state, metrics = train_step(state, batch)
                tracker.step_done(step)
                summary.end_step = step + 1
                bar.update(1)
                last_step = step + 1 == cfg.train.steps
                log_now = step == start or step % cfg.train.log_every == 0 or last_step
                # A signal reaches the processes of a run one by one: they agree at log steps, so
                # all of them stop (and checkpoint) at the same step.
                stopping = _any_process(stop.requested) if (log_now or jax.process_count() == 1) else False
                if log_now or stopping:
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    record = {
                        "loss": metrics["loss"],
                        "ce": metrics["ce"],
                        "grad_norm": metrics["grad_norm"],
                        "learning_rate": float(schedule(step)),
                        "batch_size": batch_size_at(cfg.train, step),
                        **tracker.log(step),
                    }
                    if log:
                        log.write(step, record)
                    bar.set_postfix(tracker.postfix(record))
                    summary.first_loss = summary.first_loss if summary.first_loss is not None else record["loss"]
                    summary.last_loss = record["loss"]
                eval_now = cfg.train.eval_every and ((step + 1) % cfg.train.eval_every == 0 or last_step)
                save_now = (step + 1) % cfg.checkpoint.every == 0 or last_step or stopping
                if eval_now or save_now:
                    # Eval and checkpoint time is not training time: finish the queued steps first;
                    # the tracker keeps the side work out of the interval, so tokens/s stays honest.
                    jax.block_until_ready(state)
                    if eval_now:
                        with tracker.timed("evaluation"):
                            summary.last_eval_loss = evaluate(cfg, tokenizer, eval_step, state["params"], put)
                        if log:
                            log.write(step, {"eval_loss": summary.last_eval_loss})
                        if primary:
                            bar.write(f"step {step + 1}: eval loss {summary.last_eval_loss:.4f}")
                    if save_now:
                        with tracker.timed("checkpointing"):
                            checkpoints.save(step + 1, state, data_state)
                        tracker.save_point()
                if stopping:
                    summary.interrupted = True
                    if primary:
                        bar.write(f"stopped by signal: checkpoint saved at step {step + 1}")
                    break
        with tracker.timed("checkpointing"):
            checkpoints.wait()  # the report is written once the last checkpoint is on disk
        report = tracker.finish(interrupted=summary.interrupted)
        summary.report = None if report is None else str(report)
    finally:
        prefetcher.close()
        bar.close()
        if log:
            log.close()
        checkpoints.close()
    return summary
