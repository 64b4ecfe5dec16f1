"""The destination of a conversion: written beside it, and renamed into place only when complete.

A conversion that fails (bad tensors, a full disk, Ctrl-C, a failed --verify) leaves no partial
output behind; an existing destination is replaced only with --overwrite, and only once the new
one is complete, so there is never a moment without either the old or the new output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from meshtrain.trainer.errors import UserError


def check_destination(destination: Path, *, overwrite: bool, source: Path) -> None:
    """Refuses, before any work, destinations that would lose data or cannot be written."""
    dst, src = destination.resolve(), source.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise UserError(
            f"{destination}: the destination must not be the source, inside it, or contain it "
            f"(--overwrite would delete the source)"
        )
    if destination.exists() and not overwrite:
        raise UserError(f"{destination} exists; pass --overwrite to replace it once the new conversion is complete")
    if not destination.parent.is_dir():
        raise UserError(f"{destination.parent}: no such directory to write {destination.name} in")


@contextlib.contextmanager
def staged_directory(destination: Path):
    """Yields a fresh directory beside `destination`; on success it replaces `destination`
    (keeping the old one until the rename), on any failure it is deleted."""
    staging = destination.parent / f".{destination.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = destination.parent / f".{destination.name}.replaced-{os.getpid()}"
    if destination.exists():
        destination.rename(retired)
    staging.rename(destination)
    shutil.rmtree(retired, ignore_errors=True)
