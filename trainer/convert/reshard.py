"""meshtrain -> meshtrain: another dtype, parameters only, another mesh.

The state is restored straight into the target mesh's shardings and the target dtype (Orbax reads
only each device's shards and casts on the way), then written as a new checkpoint laid out for
that mesh, on this host's devices. Checkpoints restore onto any mesh and process count anyway
(the trainer places what it reads); resharding stores them in the layout the next run reads
fastest. Without --params-only the result resumes
exactly where the source stopped (optimizer state and data position included); with it, the
result starts new runs through `checkpoint.init_from`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orbax.checkpoint as ocp

from meshtrain.trainer.config import config_differences, dump_config, load_experiment
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.data.tokenizer_kinds import copy_tokenizer
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.run.checksums import array_checksums
from meshtrain.trainer.run.saved_weights import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    DATA_ITEM,
    STATE_ITEM,
    SavedCheckpoint,
    carried_tokenizer,
    check_same_architecture,
    restore_params,
)
from meshtrain.trainer.step.partition import abstract_sharded_state, make_mesh, plan_run
from meshtrain.trainer.step.state import model_def, optimizer_for


def target_config(
    saved: SavedCheckpoint, destination: Path, *, dtype: str | None, params_only: bool, overrides: list[str]
) -> ExperimentConfig:
    """The source's config with the user's overrides (e.g. mesh.ici_tensor=2) and the new dtype;
    it points at `destination` as its run directory, or as the weights new runs start from."""
    extra = [f"model.param_dtype={dtype}"] if dtype else []
    cfg = load_experiment(str(saved.directory / CONFIG_FILE), [*overrides, *extra])
    check_same_architecture(saved.config.model, cfg.model, f"{saved.directory} with these overrides")
    changed = config_differences(saved.config, cfg, ("seed", "data", "optimizer"))
    if changed and not params_only:
        shown = ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changed)
        raise UserError(
            f"overrides change what the saved optimizer state and data position belong to "
            f"({shown}); with --params-only they are dropped and the weights start new runs"
        )
    if params_only:
        return dataclasses.replace(
            cfg,
            name=destination.name,
            run_dir=None,
            checkpoint=dataclasses.replace(cfg.checkpoint, init_from=str(destination)),
        )
    return dataclasses.replace(cfg, run_dir=str(destination))


def convert_meshtrain(saved: SavedCheckpoint, staging: Path, cfg: ExperimentConfig, *, params_only: bool) -> None:
    """Writes `saved` as cfg describes it (mesh, dtype) into `staging`."""
    mdef = model_def(cfg)
    optimizer = optimizer_for(cfg, mdef)
    plan = plan_run(cfg, mdef, optimizer, make_mesh(cfg))
    abstract = abstract_sharded_state(cfg, mdef, optimizer, plan)
    if params_only:
        items = {STATE_ITEM: ocp.args.StandardSave({"params": restore_params(saved, abstract["params"])})}
    else:
        with ocp.CheckpointManager(saved.directory / CHECKPOINTS_DIR) as source:
            restored = source.restore(
                saved.step,
                args=ocp.args.Composite(
                    **{STATE_ITEM: ocp.args.StandardRestore(abstract), DATA_ITEM: ocp.args.JsonRestore()}
                ),
            )
        # The arrays may have a new dtype: their checksums are those of what is written now.
        data = {k: v for k, v in restored[DATA_ITEM].items() if k != "checksums"}
        if cfg.checkpoint.checksums:
            data["checksums"] = array_checksums(restored[STATE_ITEM])
        items = {STATE_ITEM: ocp.args.StandardSave(restored[STATE_ITEM]), DATA_ITEM: ocp.args.JsonSave(data)}
    with ocp.CheckpointManager(staging / CHECKPOINTS_DIR, options=ocp.CheckpointManagerOptions(create=True)) as out:
        out.save(saved.step, args=ocp.args.Composite(**items))
        out.wait_until_finished()
    tokenizer = carried_tokenizer(saved)  # the new directory carries what the ids mean too
    if tokenizer:
        copy_tokenizer(tokenizer, staging)
    dump_config(cfg, staging / CONFIG_FILE)
