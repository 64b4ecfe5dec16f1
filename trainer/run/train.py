"""The training loop: from a resolved ExperimentConfig to a trained, checkpointed run directory.

Everything that can fail on bad input (dataset, tokenizer, a run directory holding another run,
a mesh or batch that does not split, an eval split too small) fails before the run directory is
written. The loop then only waits on the device at logging, eval and checkpoint steps; batches are
prepared ahead in a background thread. The same code runs on one device, a mesh of many, or many
processes: each process feeds its own rows of the global batch, and process 0 alone writes logs
and the config. A Tracker (trainer/tracking/tracker.py) turns each logged interval into throughput,
MFU, HFU, dollars and an ETA, splits the wall time into goodput parts, and writes the run report.

What can go wrong at scale is handled here as events: a step the spike guard rejects applies no
update; a streak of them rewinds to an earlier checkpoint and skips data (trainer/run/recovery.py);
no checkpoint is written while the run is in a bad streak, so retention never rotates out the last
good state; a corrupt checkpoint is set aside and an older one restored; a failed asynchronous save
stops the run at the next step with one line; a signal checkpoints and stops at the next step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time

import jax
from tqdm import tqdm

from meshtrain.trainer.config.batch_schedule import batch_size_at
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.errors import PeerFailure
from meshtrain.trainer.run.checkpoint import Checkpoints
from meshtrain.trainer.run.collective import any_process_each
from meshtrain.trainer.run.data_setup import prepare_data
from meshtrain.trainer.run.distributed import initialize
from meshtrain.trainer.run.evaluation import eval_batches_available, eval_line, evaluate
from meshtrain.trainer.run.memory_check import check_fits, device_memory, out_of_memory, pool_gpu_memory
from meshtrain.trainer.run.profiler import StepProfiler
from meshtrain.trainer.run.recovery import DivergedError, rewind_target, skip_list
from meshtrain.trainer.run.run_dir import (
    check_run_dir,
    check_same_data,
    check_same_run,
    keep_tokenizer,
    open_run_dir,
    pin_schedule,
    run_dir_path,
    saved_run,
)
from meshtrain.trainer.run.saved_weights import check_tokenizer_for_weights, initial_weights_for, restore_params
from meshtrain.trainer.run.signals import StopRequest
from meshtrain.trainer.run.trajectory import Trajectory
from meshtrain.trainer.run.watchdog import Watchdog
from meshtrain.trainer.step.compilation_cache import use_compilation_cache
from meshtrain.trainer.step.guard import init_guard
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
from meshtrain.trainer.tracking.data_ledger import DataLedger
from meshtrain.trainer.tracking.metrics_log import MetricsLog
from meshtrain.trainer.tracking.recoveries import describe, load_recoveries, record_recovery
from meshtrain.trainer.tracking.tracker import Tracker
from meshtrain.trainer.tracking.wandb_log import WandbLog

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RunSummary:
    run_dir: str
    start_step: int
    end_step: int
    first_loss: float | None = None
    last_loss: float | None = None
    last_eval_loss: float | None = None
    interrupted: bool = False
    skipped_steps: int = 0  # steps the spike guard rejected, on the trajectory of the final state
    rewinds: int = 0  # rewinds this process made
    report: str | None = None  # report.md, written by process 0 when the loop ends


def _report(tracker: Tracker, status: str, summary: RunSummary) -> None:
    report = tracker.finish(status=status)
    summary.report = None if report is None else str(report)


def _close_all(closers, *, quiet: bool) -> None:
    """Runs every closer; raises the first error, or with `quiet` only logs them all."""
    first = None
    for close in closers:
        try:
            close()
        except Exception as error:
            if quiet:
                logger.warning("while stopping: %s: %s", type(error).__name__, error)
            first = first or error
    if first is not None and not quiet:
        raise first


def _logged_record(cfg: ExperimentConfig, step: int, metrics: dict, schedule, tracker) -> dict:
    """The metrics line of a logged step: the step's figures and the tracker's (which also writes
    the goodput record, so a full disk can fail here)."""
    return {
        "loss": metrics["loss"],
        "ce": metrics["ce"],
        "grad_norm": metrics["grad_norm"],
        "learning_rate": float(schedule(step)),
        "batch_size": batch_size_at(cfg.train, step),
        "skipped": bool(metrics["skipped"]),
        "skipped_steps": int(metrics["skipped_steps"]),
        **({"spike": True} if metrics["spike"] else {}),
        **device_memory(),
        **tracker.log(step),
    }


def train(cfg: ExperimentConfig, *, progress: bool = True) -> RunSummary:
    started_at = time.perf_counter()
    pool_gpu_memory(os.environ)
    initialize(cfg.distributed)
    primary = jax.process_index() == 0
    run_dir = run_dir_path(cfg)
    check_run_dir(run_dir)
    saved = saved_run(run_dir)  # read once: it pins the schedule and binds the run's identity
    cfg = pin_schedule(cfg, saved)
    check_same_run(cfg, saved, run_dir)
    check_same_data(cfg, saved, run_dir)
    use_compilation_cache(cfg.train.compilation_cache)
    with StopRequest("nothing was trained since the newest checkpoint; the same command resumes") as stop:
        return _train(cfg, run_dir, primary, started_at, stop, progress)


def _train(cfg: ExperimentConfig, run_dir, primary: bool, started_at: float, stop: StopRequest, progress: bool):
    mesh = make_mesh(cfg)
    check_fits(cfg, mesh)
    initial_weights = initial_weights_for(cfg, run_dir)
    check_tokenizer_for_weights(cfg, initial_weights)
    tokenizer = prepare_data(cfg)
    mdef = model_def(cfg)
    optimizer = optimizer_for(cfg, mdef)
    plan = plan_run(cfg, mdef, optimizer, mesh)
    eval_batches = eval_batches_available(cfg, tokenizer, plan.feeder)

    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.checkpoint)
    tracker = Tracker(cfg, run_dir, primary=primary, started_at=started_at)
    abstract = abstract_sharded_state(cfg, mdef, optimizer, plan)

    def fresh_state():
        """Step 0: around the weights `checkpoint.init_from` names, or freshly initialized."""
        if initial_weights is None:
            return init_sharded_state(cfg, mdef, optimizer, plan)
        with tracker.timed("checkpointing"):
            params = restore_params(initial_weights, abstract["params"])
        if primary:
            print(f"initialized from {initial_weights.step_dir} (parameters only; fresh optimizer state)")
        return init_sharded_state(cfg, mdef, optimizer, plan, params)

    # A checkpoint from before the spike guard existed resumes with a fresh guard.
    fresh = {"guard": lambda: jax.tree.map(jax.device_put, init_guard(), plan.state["guard"])}
    with tracker.timed("checkpointing"):
        restored = checkpoints.restore_latest(abstract, fresh)
    recoveries = load_recoveries(run_dir)
    skips = skip_list(cfg.train.skip_batches, recoveries)
    put = lambda local_batch: global_batch(plan, local_batch)
    run = Trajectory(cfg, tokenizer, put, plan.feeder, fresh_state, checkpoints, abstract)
    start = restored[0] if restored else 0
    summary = RunSummary(str(run_dir), start, start)
    if start >= cfg.train.steps:  # nothing to do, and nothing of the run is rewritten
        print(
            f"{run_dir}: already trained for {start} steps (train.steps={cfg.train.steps}); "
            f"raise train.steps to continue"
        )
        if primary and not (run_dir / "report.md").is_file():
            summary.report = str(tracker.report_again(start))
            print(f"{run_dir}: its report was missing; written from the run's records: {summary.report}")
        checkpoints.close()
        return summary
    run.start(restored, skips)
    if primary:
        open_run_dir(cfg)  # the resolved config of what runs now (a resume may change the mesh)
        keep_tokenizer(run_dir, tokenizer)

    train_step = jit_train_step(cfg, mdef, optimizer, plan)
    eval_step = jit_eval_step(cfg, mdef, plan)
    schedule = learning_rate_schedule(cfg.optimizer, cfg.train.steps)
    decay_steps = cfg.optimizer.decay_steps
    if primary and start and cfg.optimizer.schedule == "cosine" and cfg.train.steps > decay_steps:
        print(
            f"{run_dir}: train.steps={cfg.train.steps} goes past the schedule's decay (optimizer.decay_steps="
            f"{decay_steps}, fixed when the run started): steps {max(start, decay_steps)}-{cfg.train.steps} "
            f"train at its final learning rate {float(schedule(cfg.train.steps)):.3g}"
        )
    log = MetricsLog(run_dir, WandbLog(cfg, run_dir) if cfg.tracking.wandb else None) if primary else None
    ledger = DataLedger(run_dir, plan.feeder.index, plan.feeder.count) if plan.feeder.leads else None
    bar = tqdm(
        total=cfg.train.steps,
        initial=start,
        desc=cfg.name,
        unit="step",
        disable=not (progress and primary),
        dynamic_ncols=True,
    )
    tracker.begin(start)
    profiler = StepProfiler(run_dir, cfg.train.profile_start, cfg.train.profile_steps, start)
    watchdog = Watchdog(
        run_dir,
        limit_s=cfg.train.watchdog_s,
        heartbeat_timeout_s=cfg.distributed.heartbeat_timeout_s,
        on_failure=(lambda: tracker.finish(status="failed")) if primary else None,
    ).start()
    # Rewinds in a row: reset once the run trains past the step where the last trouble was seen.
    rewinds_in_a_row, trouble_seen_at = 0, -1
    last_save = time.monotonic()
    save_every_s = cfg.checkpoint.every_minutes * 60.0
    status = "failed"

    def rewind(detected_at: int, first_bad: int, reason: str, metrics: dict) -> None:
        nonlocal recoveries, skips, rewinds_in_a_row, trouble_seen_at
        if rewinds_in_a_row >= cfg.spike.max_rewinds:
            kept = checkpoints.steps()
            kept = f"the newest good checkpoint (step {kept[-1]}) is kept" if kept else "no checkpoint was written"
            raise DivergedError(
                f"training diverged: {reason} from step {first_bad} (seen at step {detected_at}, loss "
                f"{metrics['loss']:.4g}) after {rewinds_in_a_row} rewind(s) in a row that did not get past it "
                f"(spike.max_rewinds={cfg.spike.max_rewinds}); lower optimizer.learning_rate or raise "
                f"spike.skip_batches; {kept} in {checkpoints.directory}"
            )
        checkpoints.wait()
        target = rewind_target(checkpoints.steps(), first_bad, cfg.spike.rewind_steps)
        with tracker.timed("checkpointing"):
            restored = (target, *checkpoints.restore(target, abstract, fresh)) if target is not None else None
        run.close()
        abandoned = checkpoints.delete_after(target or 0)
        restored_step = target or 0
        data_state = restored[2] if restored else None
        # The skip starts at the first batch the restored state would train on (past earlier skips).
        first_batch = skips.end_of_skip(int(data_state.get("next_batch", restored_step)) if data_state else 0)
        recovery = {
            "reason": reason,
            "first_bad_step": first_bad,
            "detected_at_step": detected_at,
            "restored_step": restored_step,
            "skipped_batches": [first_batch, first_batch + cfg.spike.skip_batches],
            "abandoned_checkpoints": abandoned,
            "redone_steps": detected_at + 1 - restored_step,
            **tracker.redo(restored_step, detected_at + 1),
        }
        if primary:
            recoveries = record_recovery(run_dir, recoveries, recovery)
            bar.write(f"meshtrain: {describe(recovery)}")
            log.write(detected_at, {"event": "rewind", **{k: v for k, v in recovery.items() if k != "reason"}})
        else:
            recoveries = [*recoveries, recovery]
        skips = skip_list(cfg.train.skip_batches, recoveries)
        run.start(restored, skips)
        bar.n = restored_step
        bar.refresh()
        rewinds_in_a_row, trouble_seen_at = rewinds_in_a_row + 1, max(trouble_seen_at, detected_at)
        summary.rewinds += 1

    try:
        while run.step < cfg.train.steps:
            step = run.step
            with tracker.timed("data_wait"):
                fed = run.prefetcher.next()
            batch, run.data_state = fed.batch, fed.data_state
            checkpoints.check_errors()  # a failed background save stops the run now, not steps later
            profiler.before_step(step)
            run.state, metrics = train_step(run.state, batch)
            traced = profiler.after_step(step, run.state)
            if traced and primary:
                bar.write(f"profile of steps {profiler.first}-{step}: {traced} (tensorboard --logdir {traced})")
            watchdog.beat(step)
            stop.in_loop = True  # from here a signal is answered with a checkpoint at a step boundary
            tracker.step_done(step)
            summary.end_step = step + 1
            bar.update(1)
            last_step = step + 1 == cfg.train.steps
            log_now = step == start or step % cfg.train.log_every == 0 or last_step
            # A signal (and the clock) reach the processes of a run one by one: they agree at
            # log steps, so all of them stop (and checkpoint) at the same step.
            agree = log_now or jax.process_count() == 1
            stopping, time_due = False, False
            if agree:
                clock_due = bool(save_every_s) and time.monotonic() - last_save >= save_every_s
                stopping, time_due = any_process_each(stop.requested, clock_due)
            eval_now = cfg.train.eval_every and ((step + 1) % cfg.train.eval_every == 0 or last_step)
            save_now = (step + 1) % cfg.checkpoint.every == 0 or last_step or stopping or time_due
            if log_now or stopping or eval_now or save_now:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                summary.skipped_steps = int(metrics["skipped_steps"])
                if metrics["tripped_at"] >= 0 or (last_step and metrics["bad_streak"] > 0):
                    first_bad = step + 1 - int(metrics["bad_streak"])
                    reason = "non-finite loss" if metrics["nonfinite"] else "loss spike"
                    with watchdog.allowance("rewinding"):
                        rewind(step, first_bad, reason, metrics)
                    continue
                if step > trouble_seen_at:  # healthy past the last trouble: that rewind worked
                    rewinds_in_a_row = 0
            if log_now and ledger:
                with checkpoints.pending_error_first():
                    ledger.record(step, fed.batch_number, fed.state_before)
            if log_now or stopping:
                with checkpoints.pending_error_first():
                    record = _logged_record(cfg, step, metrics, schedule, tracker)
                    if log:
                        log.write(step, record)
                watchdog.learn_step_time(record["step_time_s"])
                bar.set_postfix(tracker.postfix(record))
                loss = record["loss"] if math.isfinite(record["loss"]) else None
                summary.first_loss = summary.first_loss if summary.first_loss is not None else loss
                summary.last_loss = loss
            if eval_now or save_now:
                # Eval and checkpoint time is not training time: finish the queued steps first;
                # the tracker keeps the side work out of the interval, so tokens/s stays honest.
                jax.block_until_ready(run.state)
                if eval_now:
                    with tracker.timed("evaluation"), watchdog.allowance("evaluating"):
                        losses = evaluate(
                            cfg, tokenizer, eval_step, run.state["params"], put, plan.feeder, eval_batches
                        )
                    summary.last_eval_loss = losses["eval_loss"]
                    if log:
                        with checkpoints.pending_error_first():
                            log.write(step, losses)
                    if primary:
                        bar.write(f"step {step + 1}: {eval_line(losses)}")
                if save_now and metrics["bad_streak"] > 0:
                    if primary:
                        bar.write(
                            f"step {step + 1}: checkpoint not written, the run is in a streak of "
                            f"{int(metrics['bad_streak'])} bad steps (the newest good one is kept)"
                        )
                elif save_now:
                    with tracker.timed("checkpointing"), watchdog.allowance("checkpointing"):
                        checkpoints.save(step + 1, run.state, run.data_state)
                    with checkpoints.pending_error_first():
                        tracker.save_point()
                    last_save = time.monotonic()
            run.step = step + 1
            if stopping:
                summary.interrupted = True
                if primary:
                    newest = checkpoints.steps()[-1:] or ["none"]
                    bar.write(f"stopped by signal at step {step + 1}; newest checkpoint: step {newest[0]}")
                break
        with tracker.timed("checkpointing"), watchdog.allowance("writing the last checkpoint"):
            checkpoints.wait()  # the report is written once the last checkpoint is on disk
        status = "interrupted" if summary.interrupted else "finished"
    except DivergedError:
        status = "diverged"
        raise
    except jax.errors.JaxRuntimeError as error:
        oom = out_of_memory(error)
        if oom is not None:
            raise oom from None
        if jax.process_count() > 1:  # a collective whose peer went away: the runtime's words, in one line
            first = str(error).strip().splitlines()[0][:300]
            raise PeerFailure(
                f"process {jax.process_index()}: a step failed across processes, a peer died or hung ({first})"
            ) from None
        raise
    finally:
        # On the way out of a failure, closing must not replace the failure's own message (a full
        # disk also fails the last metrics flush): the close errors are then only logged.
        failing = sys.exc_info()[1] is not None
        closers = [lambda: watchdog.close(failing=failing), profiler.stop, run.close, bar.close]
        closers.append(lambda: _report(tracker, status, summary))
        closers += [log.close] if log else []
        closers += [ledger.close] if ledger else []
        closers.append(checkpoints.close)
        _close_all(closers, quiet=failing)
    return summary
