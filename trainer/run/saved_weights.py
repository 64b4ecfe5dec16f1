"""Weights on disk: finding a checkpoint and the config beside it, and reading its parameters alone.

Every meshtrain checkpoint lives in a directory shaped like a run (`config.yaml` plus Orbax steps
under `checkpoints/`), whether a run wrote it or `meshtrain convert` did (then the step's state
may hold parameters only). This is what `checkpoint.init_from`, `meshtrain convert` and
`meshtrain sample` read. Parameters restore onto any mesh and in any dtype: Orbax reads only the
shards each device needs and casts on the way.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from meshtrain.model.config import ModelConfig
from meshtrain.trainer.config import load_config_file
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.data.tokenizer_kinds import load_tokenizer, tokenizer_in
from meshtrain.trainer.errors import ConfigError, DataError, UserError
from meshtrain.trainer.step.state import model_def
from meshtrain.trainer.storage.paths import absolute, as_path

CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"
STATE_ITEM = "state"  # the Orbax item holding {step, params, opt_state, rng} (or {params})
DATA_ITEM = "data"  # the Orbax item holding the data iterators' positions

# Model fields that change how a run trains or computes, not what its parameters mean.
_NOT_ARCHITECTURE = {"name", "z_loss", "init_std", "dtype", "param_dtype", "remat", "scan_layers", "attention"}


@dataclasses.dataclass(frozen=True)
class SavedCheckpoint:
    """One step of a checkpoint directory, and the resolved experiment config that describes it."""

    directory: epath.Path  # the run-shaped directory (config.yaml, checkpoints/)
    step: int
    step_dir: epath.Path
    config: ExperimentConfig

    @property
    def state_dir(self) -> epath.Path:
        return self.step_dir / STATE_ITEM


def find_checkpoint(path: str | epath.Path, step: int | None = None) -> SavedCheckpoint:
    """The checkpoint at `path`: a run directory or `meshtrain convert` output (its newest step, or
    `step`), its checkpoints/ directory, or one step directory inside it."""
    path = absolute(path, "checkpoint")
    if not path.exists():
        raise UserError(
            f"{path}: no such checkpoint (expected a run directory, a `meshtrain convert` "
            f"output, or a step directory under checkpoints/)"
        )
    if path.name.isdigit() and path.parent.name == CHECKPOINTS_DIR:
        directory, step = path.parent.parent, int(path.name) if step is None else step
    elif path.name == CHECKPOINTS_DIR:
        directory = path.parent
    else:
        directory = path
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(
            f"{directory}: no {CONFIG_FILE}; a meshtrain checkpoint directory holds the "
            f"config.yaml that describes its model beside {CHECKPOINTS_DIR}/"
        )
    steps = complete_steps(directory / CHECKPOINTS_DIR)
    if not steps:
        raise UserError(f"{directory / CHECKPOINTS_DIR}: no complete checkpoint")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise UserError(f"{directory}: no checkpoint at step {step}; it has steps {', '.join(map(str, steps))}")
    return SavedCheckpoint(directory, step, directory / CHECKPOINTS_DIR / str(step), load_config_file(config_path))


def complete_steps(checkpoints: epath.Path) -> list[int]:
    """Steps whose write finished (Orbax renames a step directory into place only when complete)."""
    if not checkpoints.is_dir():
        return []
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit() and (p / STATE_ITEM).is_dir())


def restore_params(saved: SavedCheckpoint, abstract_params) -> dict:
    """The checkpoint's parameters alone, placed and cast as `abstract_params` (ShapeDtypeStructs,
    with shardings) say; optimizer state and anything else in the checkpoint is never read."""
    restore_args = jax.tree.map(
        lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype), abstract_params
    )
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            saved.state_dir,
            args=ocp.args.PyTreeRestore(
                item={"params": abstract_params}, restore_args={"params": restore_args}, partial_restore=True
            ),
        )
    return restored["params"]


def check_same_architecture(saved: ModelConfig, wanted: ModelConfig, source: str) -> None:
    """Raises when the saved weights belong to another architecture than `wanted`; training and
    numeric settings (dtype, remat, z_loss, ...) may differ, and so may max_seq_len under rope."""
    differences = []
    for field in dataclasses.fields(ModelConfig):
        name = field.name
        if name in _NOT_ARCHITECTURE or (name == "max_seq_len" and wanted.positions == "rope"):
            continue
        old, new = getattr(saved, name), getattr(wanted, name)
        if old != new:
            differences.append(f"model.{name}: {old!r} in the checkpoint, {new!r} here")
    if differences:
        raise ConfigError(
            f"{source} holds another model ({'; '.join(differences)}); use the model settings from its config.yaml"
        )


def initial_weights_for(cfg: ExperimentConfig, run_dir: epath.Path) -> SavedCheckpoint | None:
    """The checkpoint `checkpoint.init_from` names, checked against this run's model before the
    run starts; None when the run starts from a fresh initialization or resumes its own checkpoints
    (the weights it started from need not exist any more)."""
    if not cfg.checkpoint.init_from or complete_steps(run_dir / CHECKPOINTS_DIR):
        return None
    saved = find_checkpoint(cfg.checkpoint.init_from)
    check_same_architecture(saved.config.model, cfg.model, f"checkpoint.init_from={cfg.checkpoint.init_from}")
    return saved


def carried_tokenizer(saved: SavedCheckpoint) -> str | None:
    """The tokenizer a checkpoint directory carries: the tokenizer.model or tokenizer.json in it
    (a conversion copies the source's; a run copies the one it trained with), else the file its
    config names, if that exists. Never a cached tokenizer that merely has the right size."""
    inside = tokenizer_in(saved.directory)
    if inside:
        return inside
    named = saved.config.data.tokenizer
    return named if named and as_path(named).is_file() else None


def check_tokenizer_for_weights(cfg: ExperimentConfig, initial: SavedCheckpoint | None) -> None:
    """A run starting from `checkpoint.init_from` weights must tokenize as they were trained: with
    the tokenizer they carry, or one with the same pieces. A new tokenizer (data.tokenizer null)
    would give ids that mean nothing to the embedding, and train silently anyway."""
    if initial is None:
        return
    carried = carried_tokenizer(initial)
    where = f"checkpoint.init_from={cfg.checkpoint.init_from}"
    if cfg.data.tokenizer is None:
        need = (
            f"data.tokenizer={carried}"
            if carried
            else "data.tokenizer to the tokenizer those weights were trained with"
        )
        has = f"carries the tokenizer {carried}" if carried else "carries no tokenizer"
        raise DataError(
            f"{where} {has}, but data.tokenizer is null, which would train a new tokenizer whose ids mean "
            f"nothing to those weights: set {need}"
        )
    if carried and os.fspath(as_path(carried)) != os.fspath(as_path(cfg.data.tokenizer)):
        if load_tokenizer(carried).pieces() != load_tokenizer(cfg.data.tokenizer).pieces():
            raise DataError(
                f"data.tokenizer={cfg.data.tokenizer} has another vocabulary than the tokenizer {where} carries "
                f"({carried}): its ids would mean other tokens to those weights; use data.tokenizer={carried}"
            )


def load_decoder(saved: SavedCheckpoint, compute_dtype: str | None = None):
    """The checkpoint's model as an NNX Decoder on one device (for sampling and verifying models
    that fit one device), computing in `compute_dtype` (default: the model config's)."""
    cfg = saved.config
    if compute_dtype:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=compute_dtype))
    mdef = model_def(cfg)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    targets = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), nnx.to_pure_dict(mdef.abstract_params)
    )
    return mdef.bind(restore_params(saved, targets))
