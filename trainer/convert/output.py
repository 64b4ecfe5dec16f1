"""The destination of a conversion: written beside it, and put in place only when complete.

A conversion that fails (bad tensors, a full disk, Ctrl-C, a failed --verify) leaves no partial
output behind; an existing destination is replaced only with --overwrite, and only once the new
one is complete. On a disk the new output is renamed into place, so there is never a moment
without either the old or the new one. An object store has no rename: the output is staged in a
local temporary directory and uploaded once complete, its config file last (what readers look
for first), after --overwrite deleted the old one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from meshtrain.trainer.errors import UserError
from meshtrain.trainer.storage.paths import is_url
from meshtrain.trainer.storage.transfer import copy_tree

# What a reader of the output looks for first: uploaded last, once everything else is there.
_CONFIG_FILES = ("config.yaml", "config.json")


def _canonical(path) -> str:
    return str(path).rstrip("/") if is_url(path) else os.path.realpath(path)


def check_destination(destination, *, overwrite: bool, source) -> None:
    """Refuses, before any work, destinations that would lose data or cannot be written."""
    dst, src = _canonical(destination), _canonical(source)
    if dst == src or dst.startswith(src + "/") or src.startswith(dst + "/"):
        raise UserError(
            f"{destination}: the destination must not be the source, inside it, or contain it "
            f"(--overwrite would delete the source)"
        )
    if destination.exists() and not overwrite:
        raise UserError(f"{destination} exists; pass --overwrite to replace it once the new conversion is complete")
    if not is_url(destination) and not destination.parent.is_dir():
        raise UserError(f"{destination.parent}: no such directory to write {destination.name} in")


@contextlib.contextmanager
def staged_directory(destination):
    """Yields a fresh local directory; on success its contents replace `destination`, on any
    failure it is deleted."""
    if is_url(destination):
        staging = Path(tempfile.mkdtemp(prefix="meshtrain-convert-"))
    else:
        staging = Path(destination.parent) / f".{destination.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if is_url(destination):
        try:
            if destination.exists():
                destination.rmtree()
            copy_tree(staging, destination, last=_CONFIG_FILES)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return
    retired = Path(destination.parent) / f".{destination.name}.replaced-{os.getpid()}"
    if destination.exists():
        destination.rename(retired)
    staging.rename(destination)
    shutil.rmtree(retired, ignore_errors=True)
