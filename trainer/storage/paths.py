"""One path type for local files and object-store URLs: etils.epath.Path, as Orbax and TFDS use.

Every path a run reads or writes (its run directory, checkpoints, data_dir, tokenizer, init_from,
convert's SRC and DST) goes through `as_path`. pathlib must never see a URL: it folds `gs://b/x`
into `gs:/b/x`, a local folder, and a pod's hosts would each write their own "checkpoints" there.
An epath.Path is backed by the OS for local paths and by fsspec (gcsfs for gs://, s3fs for s3://)
for URLs; a missing fsspec backend is a one-line error naming the extra that installs it.
"""

from __future__ import annotations

import importlib.util
import os
import re

import fsspec.config
from etils import epath

from meshtrain.trainer.errors import UserError

# scheme -> (the fsspec backend's module, the meshtrain extra that installs it)
URL_BACKENDS = {"gs": ("gcsfs", "gcs"), "s3": ("s3fs", "s3")}

# fsspec caches directory listings by default. A run lists what it wrote itself (its metrics
# parts) and what other hosts write, so a cached listing would hide objects: listings are always
# asked for afresh (a listing per log step or checkpoint is nothing beside the step).
for _protocol in ("gs", "gcs", "s3", "s3a"):
    fsspec.config.conf.setdefault(_protocol, {})["use_listings_cache"] = False

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(path: str | os.PathLike) -> str | None:
    """'gs' for 'gs://bucket/x', None for a local path."""
    match = _URL.match(os.fspath(path))
    return match.group(1).lower() if match else None


def is_url(path: str | os.PathLike) -> bool:
    return url_scheme(path) is not None


def as_path(value: str | os.PathLike, what: str = "path") -> epath.Path:
    """`value` as an epath.Path: a URL as it is, a local path with `~` expanded (left relative, so
    messages show what the user typed). `what` names the setting in errors (e.g. 'run_dir')."""
    text = os.fspath(value)
    scheme = url_scheme(text)
    if scheme is None:
        return epath.Path(os.path.expanduser(text))
    if scheme not in URL_BACKENDS:
        known = ", ".join(f"{s}://" for s in URL_BACKENDS)
        raise UserError(f"{what}={text}: meshtrain reads and writes local paths and {known} URLs, not {scheme}://")
    module, extra = URL_BACKENDS[scheme]
    if importlib.util.find_spec(module) is None:
        raise UserError(f'{what}={text}: {scheme}:// paths need the {module} package: pip install -e ".[{extra}]"')
    return epath.Path(text)


def absolute(value: str | os.PathLike, what: str = "path") -> epath.Path:
    """as_path(value), made absolute when it is local (a URL is absolute already: epath's own
    .absolute() would prefix it with the working directory)."""
    path = as_path(value, what)
    return path if is_url(path) else epath.Path(os.path.abspath(path))
