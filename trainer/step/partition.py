"""Lays a run over a device mesh: shardings for the state and the batch, and the jitted steps.

Everything here is decided from the config before anything is compiled, so a layout that cannot
work (a mesh that is not the device count, a batch or a tensor that does not split evenly, a rule
naming an axis that does not exist) fails with the key to change rather than an XLA error deep
in compilation. The step functions themselves (trainer/step/compute.py) know nothing of meshes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from meshtrain.model import axes
from meshtrain.model.loss import cross_entropy_loss
from meshtrain.sharding.collectives import vocab_parallel_cross_entropy
from meshtrain.sharding.layout import MeshLayout
from meshtrain.sharding.mesh import MeshError, build_mesh
from meshtrain.sharding.rules import (
    check_rules,
    dimension_axes,
    named_sharding,
    split_ways,
)
from meshtrain.trainer.config.batch_schedule import batch_sizes, microbatches_at
from meshtrain.trainer.config.mesh_shape import mesh_shape
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.formatting import format_mesh
from meshtrain.trainer.step.compute import make_eval_step, make_train_step
from meshtrain.trainer.step.guard import SpikeRule
from meshtrain.trainer.step.state import (
    ModelDef,
    abstract_state,
    init_state,
    model_def,
    optimizer_for,
)

BATCH_NAMES = (axes.BATCH, axes.LENGTH)


def make_mesh(cfg: ExperimentConfig, devices: Sequence | None = None, num_slices: int | None = None) -> Mesh:
    """The mesh of `cfg.mesh` over `devices` (default: every device of every process)."""
    _check_rules(cfg.mesh.rules)
    try:
        return build_mesh(mesh_shape(cfg), devices, num_slices)
    except MeshError as error:
        raise ConfigError(str(error)) from None


def _check_rules(rules) -> None:
    unknown = [logical for logical, _ in rules if logical not in axes.ALL]
    if unknown:
        raise ConfigError(
            f"mesh.rules names logical axis {unknown[0]!r}, which the model does not "
            f"use; the model's axes are {', '.join(axes.ALL)}"
        )
    try:
        check_rules(rules)
    except MeshError as error:
        raise ConfigError(f"mesh.rules: {error}") from None


@dataclasses.dataclass(frozen=True)
class Feeder:
    """Which rows of every global batch this process loads: block `index` of `count` equal,
    consecutive blocks. Processes whose devices hold the same rows (a tensor or sequence axis that
    spans hosts, as PaLM 540B's 12-way tensor axis spans 6 TPU v4 hosts) are one feeder: each of
    them loads those rows, so the global batch is the same whatever the number of processes."""

    index: int
    count: int
    leads: bool = True  # the lowest-numbered process of its feeder: the one that records its data ledger


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
    """Where every array of a run lives, and the loss that suits the layout."""

    mesh: Mesh
    layout: MeshLayout
    state: Any  # the train state's tree of NamedShardings
    batch: NamedSharding  # every [rows, seq_len] feature of a batch
    replicated: NamedSharding
    loss_fn: Callable
    feeder: Feeder


def batch_feeder(sharding: NamedSharding, rows: int, seq_len: int, process: int) -> Feeder:
    """The Feeder of process `process` under the batch sharding (rows: any batch size it divides).
    A ConfigError when the processes' rows are not equal consecutive blocks."""
    held: dict[int, set[tuple[int, int]]] = {}
    for device, index in sharding.devices_indices_map((rows, seq_len)).items():
        start, stop, _ = index[0].indices(rows)
        held.setdefault(device.process_index, set()).add((start, stop))
    spans = {}
    for owner, blocks in held.items():
        ordered = sorted(blocks)
        if any(a[1] < b[0] for a, b in zip(ordered, ordered[1:])):
            raise ConfigError(f"process {owner} would hold rows {ordered} of a batch, not one consecutive block")
        spans[owner] = (ordered[0][0], max(stop for _, stop in ordered))
    distinct = sorted(set(spans.values()))
    consecutive = all(a[1] == b[0] for a, b in zip(distinct, distinct[1:]))
    if not consecutive or len({stop - start for start, stop in distinct}) != 1:
        raise ConfigError(
            f"the batch axes give the processes overlapping or unequal rows of a batch: {sorted(spans.items())}"
        )
    leader = min(owner for owner, span in spans.items() if span == spans[process])
    return Feeder(distinct.index(spans[process]), len(distinct), leads=leader == process)


def plan_run(
    cfg: ExperimentConfig, mdef: ModelDef, optimizer: optax.GradientTransformation, mesh: Mesh
) -> ShardingPlan:
    """Shardings of the state (the optimizer's moments like their parameters) and the batch.

    Raises ConfigError naming the tensor, dimension and axis of any split that is not even, and
    the batch sizes the batch-sharding axes do not divide.
    """
    feeder = _feeder(cfg, mesh)
    _check_batches(cfg, mesh, feeder)
    layout = MeshLayout(mesh, cfg.mesh.rules, cfg.mesh.collective_matmul)
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract_params = abstract_state(cfg, mdef, optimizer)["params"]
    try:
        params = jax.tree_util.tree_map_with_path(
            lambda path, leaf, names: named_sharding(
                "params/" + "/".join(str(getattr(k, "key", k)) for k in path), leaf.shape, names, mesh, cfg.mesh.rules
            ),
            abstract_params,
            mdef.axes,
            is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
        )
        batch = named_sharding("batch", (_largest_batch(cfg), cfg.data.seq_len), BATCH_NAMES, mesh, cfg.mesh.rules)
    except MeshError as error:
        raise ConfigError(f"{error} (mesh {_describe(mesh)}; change mesh.* or mesh.rules)") from None
    # A moment shaped like its parameter is split like it; anything else (counts, Adafactor's
    # (1,)-shaped placeholders for unfactored rows/columns) is small and replicated.
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    opt_state = optax.tree_map_params(
        optimizer,
        lambda leaf, sharding, param: sharding if leaf.shape == param.shape else replicated,
        abstract_opt,
        params,
        abstract_params,
        transform_non_params=lambda _: replicated,
    )
    guard = jax.tree.map(lambda _: replicated, abstract_state(cfg, mdef, optimizer)["guard"])
    state = {"step": replicated, "params": params, "opt_state": opt_state, "rng": replicated, "guard": guard}
    tensor_parallel = mesh.shape["tensor"] > 1 and cfg.mesh.vocab_parallel_loss
    loss_fn = (
        functools.partial(vocab_parallel_cross_entropy, mesh=mesh, rules=cfg.mesh.rules)
        if tensor_parallel
        else cross_entropy_loss
    )
    return ShardingPlan(mesh, layout, state, batch, replicated, loss_fn, feeder)


def _describe(mesh: Mesh) -> str:
    return format_mesh(mesh.shape)


def _largest_batch(cfg: ExperimentConfig) -> int:
    return max(batch_sizes(cfg.train))


def batch_ways(cfg: ExperimentConfig, mesh_shape: Mapping[str, int]) -> int:
    """Into how many row blocks the batch axes split a batch on a mesh of `mesh_shape`."""
    return split_ways(dimension_axes(BATCH_NAMES, cfg.mesh.rules)[0], mesh_shape)


def _feeder(cfg: ExperimentConfig, mesh: Mesh) -> Feeder:
    ways = batch_ways(cfg, mesh.shape)
    try:
        probe = named_sharding("batch", (ways, cfg.data.seq_len), BATCH_NAMES, mesh, cfg.mesh.rules)
    except MeshError as error:
        raise ConfigError(f"{error} (mesh {_describe(mesh)}; change mesh.* or mesh.rules)") from None
    return batch_feeder(probe, ways, cfg.data.seq_len, jax.process_index())


def _check_batches(cfg: ExperimentConfig, mesh: Mesh, feeder: Feeder) -> None:
    problem = batch_split_problem(cfg, mesh.shape, feeder.count)
    if problem:
        raise ConfigError(problem)


def batch_split_problem(cfg: ExperimentConfig, mesh_shape: Mapping[str, int], feeders: int) -> str | None:
    """Why some batch size of the schedule does not split into microbatches the batch axes of a
    mesh of `mesh_shape` divide, or into equal shares for the `feeders` that load it (see Feeder);
    None when every one does. (The run checks its own mesh; `meshtrain launch` the job it renders.)"""
    batch_axes = dimension_axes(BATCH_NAMES, cfg.mesh.rules)[0]
    ways = batch_ways(cfg, mesh_shape)
    for size in batch_sizes(cfg.train):
        count = microbatches_at(cfg.train, size)
        micro, rest = divmod(size, count)
        if rest or micro % ways:
            return (
                f"train.batch_size={size} in {count} microbatch(es) gives microbatches of {size / count:g} "
                f"rows, which the batch axes {' x '.join(batch_axes) or '(none)'} = {ways} of mesh "
                f"{format_mesh(mesh_shape)} do not divide: make "
                + (
                    f"every batch size and train.microbatch_size a multiple of {ways}"
                    if cfg.train.microbatch_size
                    else f"every batch size a multiple of {ways * count}"
                )
            )
        if size % feeders:
            return f"train.batch_size={size} does not split evenly over the {feeders} processes that load distinct rows"
    return None


def abstract_sharded_state(cfg: ExperimentConfig, mdef: ModelDef, optimizer, plan: ShardingPlan):
    """ShapeDtypeStructs of the state carrying the plan's shardings: the restore target, and
    what ahead-of-time compilation lowers against."""
    shapes = abstract_state(cfg, mdef, optimizer)
    return jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes, plan.state
    )


def init_sharded_state(cfg: ExperimentConfig, mdef: ModelDef, optimizer, plan: ShardingPlan, params=None):
    """A fresh state created directly in its shards (no device ever holds all of it); `params`,
    already in the plan's shardings (restored weights), replace the random initialization."""
    if params is None:
        return jax.jit(lambda: init_state(cfg, mdef, optimizer), out_shardings=plan.state)()
    return jax.jit(
        lambda p: init_state(cfg, mdef, optimizer, p),
        in_shardings=(plan.state["params"],),
        out_shardings=plan.state,
        donate_argnums=0,
    )(params)


def _traced_with_layout(fn: Callable, layout: MeshLayout) -> Callable:
    def traced(*args):
        with axes.use_layout(layout):
            return fn(*args)

    return traced


def jit_train_step(cfg: ExperimentConfig, mdef: ModelDef, optimizer, plan: ShardingPlan):
    """(state, batch) -> (state, metrics), jitted with explicit shardings; the state is donated."""
    rule = SpikeRule.from_config(cfg.spike)
    microbatches = lambda rows: microbatches_at(cfg.train, rows)
    step = make_train_step(mdef, optimizer, cfg.model.z_loss, microbatches, rule, plan.loss_fn)
    return jax.jit(
        _traced_with_layout(step, plan.layout),
        in_shardings=(plan.state, plan.batch),
        out_shardings=(plan.state, plan.replicated),
        donate_argnums=0,
    )


def jit_eval_step(cfg: ExperimentConfig, mdef: ModelDef, plan: ShardingPlan):
    """(params, batch) -> (summed cross-entropy, tokens), jitted with explicit shardings."""
    step = make_eval_step(mdef, cfg.model.z_loss, plan.loss_fn)
    return jax.jit(
        _traced_with_layout(step, plan.layout),
        in_shardings=(plan.state["params"], plan.batch),
        out_shardings=plan.replicated,
    )


def global_batch(plan: ShardingPlan, local_batch: dict) -> dict:
    """This process's rows -> the global batch as sharded arrays (each process feeds only its
    feeder's rows; `jax.make_array_from_process_local_data` places them on its devices)."""

    def to_global(x):
        shape = (x.shape[0] * plan.feeder.count, *x.shape[1:])
        return jax.make_array_from_process_local_data(plan.batch, x, shape)

    return {k: to_global(v) for k, v in local_batch.items()}


def trace_train_step(cfg: ExperimentConfig, mesh: Mesh, batch_size: int | None = None) -> jax.stages.Traced:
    """The real train step, traced for `mesh` against abstract state and a batch of `batch_size`
    sequences (default: the largest of the schedule); nothing is allocated. `.jaxpr` is the program
    to count; `.lower().compile()` is what `meshtrain compile` builds for a TPU topology."""
    mdef = model_def(cfg)
    optimizer = optimizer_for(cfg, mdef)
    plan = plan_run(cfg, mdef, optimizer, mesh)
    state = abstract_sharded_state(cfg, mdef, optimizer, plan)
    rows, length = batch_size or _largest_batch(cfg), cfg.data.seq_len
    dtypes = {"inputs": "int32", "targets": "int32", "segment_ids": "int32", "positions": "int32", "weights": "float32"}
    batch = {k: jax.ShapeDtypeStruct((rows, length), d, sharding=plan.batch) for k, d in dtypes.items()}
    return jit_train_step(cfg, mdef, optimizer, plan).trace(state, batch)
