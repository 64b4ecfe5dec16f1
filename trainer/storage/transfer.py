"""Copying directories between a disk and an object store, for what only handles one of them.

array_record's reader and writer (and so TFDS preparing or grain reading a dataset) open local
files only, and an object store has no rename of a directory. So a dataset on gs:// is staged to
a local copy before it is read, a dataset prepared here is uploaded when done, and a directory
set aside on an object store is copied and then deleted.
"""

from __future__ import annotations

import json
import os
import shutil

from meshtrain.trainer.storage.paths import as_path, is_url

STAGED_MARKER = ".meshtrain-staged.json"


def _files(root) -> dict[str, int]:
    """{path relative to `root`: size} of every file under `root`."""
    root = as_path(root)
    prefix = _without_scheme(root)
    found = {}
    for directory, _, names in root.walk():  # gcsfs yields directories without their scheme
        relative = _without_scheme(directory)[len(prefix) :].strip("/")
        for name in names:
            key = f"{relative}/{name}" if relative else name
            found[key] = (root / key).stat().length
    return found


def _without_scheme(path) -> str:
    return str(path).split("://", 1)[-1].rstrip("/")


def copy_tree(source, target, *, last: tuple[str, ...] = ()) -> None:
    """Copies every file under `source` to the same place under `target`; the files named in
    `last` (relative paths) are copied after all the others, so a reader that looks for them
    first sees a whole tree."""
    source, target = as_path(source), as_path(target)
    names = sorted(_files(source), key=lambda name: name in last)
    for name in names:
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        (source / name).copy(destination, overwrite=True)


def move_tree(source, target) -> None:
    """Moves the directory `source` to `target`: a rename on a disk, copy then delete on an object store."""
    source, target = as_path(source), as_path(target)
    if not is_url(source) and not is_url(target):
        shutil.move(os.fspath(source), os.fspath(target))
        return
    copy_tree(source, target)
    source.rmtree()


def stage_locally(source, local) -> None:
    """Makes `local` a copy of the remote directory `source`, reusing a copy made before.

    A copy is whole when its marker (written last) lists the same files and sizes as the source;
    otherwise the files that differ are copied again. Files are written under temporary names and
    renamed, so processes of one host staging the same directory at once never see half a file.
    """
    source, local = as_path(source), as_path(local)
    wanted = _files(source)
    marker = local / STAGED_MARKER
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return
    for name, size in wanted.items():
        destination = local / name
        if destination.exists() and destination.stat().length == size:
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
        (source / name).copy(partial, overwrite=True)
        os.replace(partial, destination)
    partial = marker.with_name(f"{marker.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(wanted, sort_keys=True))
    os.replace(partial, marker)
