"""JAX's persistent compilation cache for runs and AOT compiles, and what it saved.

A restarted run (preemption, a rewind, a resumed job) compiles exactly the program it compiled
before: with the cache, the executable is read back instead (the PaLM 540B step takes minutes to
compile). The cache is shared by every run of this user by default, so a second run of the same
shape compiles nothing either; JAX keys entries by the program, its shardings, the compiler
flags and the jax/jaxlib versions, so a hit is the very executable a compile would build. The
directory may be on an object store (JAX reads it through etils.epath). A site-wide cache set
through JAX_COMPILATION_CACHE_DIR wins over the config.

JAX reports each hit and the compile time it saved through jax.monitoring; this module keeps the
per-process totals for the goodput record.
"""

from __future__ import annotations

import os

import jax
import jax.monitoring

from meshtrain.trainer.storage.paths import absolute

_HIT = "/jax/compilation_cache/cache_hits"
_SAVED = "/jax/compilation_cache/compile_time_saved_sec"
_totals = {"hits": 0, "saved_s": 0.0}
_listening = False


def use_compilation_cache(directory: str | None) -> str | None:
    """Points JAX's persistent cache at `directory` (None or "": off, unless the environment sets
    one); returns the directory in use."""
    global _listening
    chosen = os.environ.get("JAX_COMPILATION_CACHE_DIR") or (os.fspath(absolute(directory)) if directory else None)
    if chosen:
        jax.config.update("jax_compilation_cache_dir", chosen)
    if not _listening:  # jax.monitoring has no public way to remove a listener: add ours once
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _listening = True
    return chosen


def _on_event(event: str, **_) -> None:
    if event == _HIT:
        _totals["hits"] += 1


def _on_duration(event: str, seconds: float, **_) -> None:
    if event == _SAVED:
        _totals["saved_s"] += seconds


def cache_totals() -> dict:
    """{"hits": executables read from the cache, "saved_s": compile seconds they saved} so far in
    this process."""
    return dict(_totals)
