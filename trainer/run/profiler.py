"""A jax.profiler trace of a few training steps, in the run directory.

`train.profile_steps` steps from `train.profile_start` (the first steps hold compilation, so the
default start is past them) are traced on every process into run_dir/profile: the layout
TensorBoard's profile plugin reads (profile/plugins/profile/<time>/<host>.xplane.pb, `tensorboard
--logdir run_dir/profile`), and a Perfetto trace (<host>.trace.json.gz) beside it. The trace
stops after the last profiled step has finished on the device, not when it was dispatched. For a
run directory on an object store the trace is written locally and uploaded when it stops. A
resumed run that starts past `profile_start` takes no second profile.
"""

from __future__ import annotations

import os
import tempfile

import jax

from meshtrain.trainer.storage.paths import as_path, is_url
from meshtrain.trainer.storage.transfer import copy_tree
from meshtrain.trainer.tracking.report import PROFILE_DIR


class StepProfiler:
    def __init__(self, run_dir, first_step: int, steps: int, start_step: int):
        self.run_dir = as_path(run_dir)
        self.first, self.end = first_step, first_step + steps
        self.enabled = steps > 0 and first_step >= start_step
        self._local = None

    def before_step(self, step: int) -> None:
        if not self.enabled or step != self.first:
            return
        remote = is_url(self.run_dir)
        self._local = tempfile.mkdtemp(prefix="meshtrain-profile-") if remote else os.fspath(self.run_dir / PROFILE_DIR)
        jax.profiler.start_trace(self._local, create_perfetto_trace=True)

    def after_step(self, step: int, state) -> str | None:
        """Stops the trace after its last step; returns where it is then (else None)."""
        if self._local is None or step + 1 != self.end:
            return None
        jax.block_until_ready(state)
        return self.stop()

    def stop(self) -> str | None:
        """Stops a trace still running (a run that ends or fails inside the profiled steps)."""
        if self._local is None:
            return None
        jax.profiler.stop_trace()
        local, self._local, self.enabled = self._local, None, False
        target = self.run_dir / PROFILE_DIR
        if is_url(self.run_dir):
            copy_tree(local, target)
        return os.fspath(target)
