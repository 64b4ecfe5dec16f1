"""Hugging Face -> meshtrain: a local Llama or GPT-NeoX directory becomes a meshtrain checkpoint.

The output is run-shaped (config.yaml + checkpoints/0 holding the parameters) and its config.yaml
names itself in `checkpoint.init_from`, so `meshtrain train DST/config.yaml [key=value ...]` starts
a new run from the converted weights. Every expected tensor is checked by name and shape before
anything is written; then each group of meshtrain parameters (one, or the three a fused NeoX qkv
matrix splits into) is assembled layer by layer from the source files and saved, so memory holds
that group (stacked over layers) plus one layer's source tensors, never the model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from meshtrain.model.config import model_config_errors
from meshtrain.trainer.config import dump_config, load_experiment
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.convert.families import family_for_architectures
from meshtrain.trainer.convert.family_base import Family, TensorGroup, hf_tensor_shapes
from meshtrain.trainer.convert.meshtrain_format import (
    StreamingCheckpointWriter,
    param_shapes,
    release_freed_memory,
)
from meshtrain.trainer.convert.safetensors_reader import open_weights
from meshtrain.trainer.data.tokenizer_kinds import copy_tokenizer, tokenizer_in
from meshtrain.trainer.errors import UserError


def read_hf_config(source: Path) -> dict:
    path = source / "config.json"
    if not path.is_file():
        raise UserError(
            f"{source}: no config.json; a Hugging Face model directory holds config.json "
            f"beside its weights (model.safetensors or a sharded index)"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object of model settings")
    return config


def check_tensors(reader, expected: dict[str, tuple], family: Family, cfg: ExperimentConfig, source: Path) -> None:
    """One error listing every missing, unexpected and mis-shaped tensor, by name and shape."""
    found = {name for name in reader.names() if not family.ignored(name, cfg.model)}
    problems = [f"missing {name} (expected shape {list(expected[name])})" for name in sorted(set(expected) - found)]
    problems += [f"unexpected {name} (shape {list(reader.shape(name))})" for name in sorted(found - set(expected))]
    problems += [
        f"{name}: expected shape {list(expected[name])}, found {list(reader.shape(name))}"
        for name in sorted(found & set(expected))
        if tuple(reader.shape(name)) != tuple(expected[name])
    ]
    if problems:
        shown = problems[:40] + ([f"... and {len(problems) - 40} more"] if len(problems) > 40 else [])
        raise UserError(
            f"{source}: the weights do not match config.json ({family.architecture}):\n  " + "\n  ".join(shown)
        )


def stored_dtype(reader, names) -> str:
    """The widest floating dtype among the source's weights: converting to it loses nothing even
    from checkpoints that mix precisions (e.g. float32 norms beside bfloat16 matrices)."""
    dtypes = {np.dtype(reader.dtype(name)) for name in names if name in reader}
    floats = [d for d in dtypes if np.issubdtype(d, np.floating) or d == jnp.bfloat16]
    return max(floats, key=lambda d: d.itemsize).name if floats else "float32"


def converted_config(
    family: Family, hf_config: dict, destination: Path, dtype: str, tokenizer: str | None
) -> ExperimentConfig:
    """The default experiment with the Hugging Face model in it, starting from `destination`."""
    base = dataclasses.replace(load_experiment(None), name=destination.name)
    model = dataclasses.replace(family.model_config(hf_config, base.model), param_dtype=dtype)
    errors = model_config_errors(model)
    if errors:
        raise UserError(
            "config.json gives a model meshtrain cannot build: "
            + "; ".join(f"{key}={value!r} must be {valid}" for key, value, valid in errors)
        )
    data = (
        dataclasses.replace(base.data, tokenizer=str(destination / os.path.basename(tokenizer)))
        if tokenizer
        else base.data
    )
    return dataclasses.replace(
        base, model=model, data=data, checkpoint=dataclasses.replace(base.checkpoint, init_from=str(destination))
    )


def convert_from_hf(
    source: Path, staging: Path, destination: Path, *, dtype: str | None, allow_pickle: bool, progress: tqdm
) -> tuple[ExperimentConfig, str]:
    """Writes the meshtrain checkpoint of `source` into `staging` (renamed to `destination` later);
    returns its config and the dtype the source stored. `progress` counts the source tensors read."""
    hf_config = read_hf_config(source)
    family = family_for_architectures(hf_config.get("architectures"))
    tokenizer = tokenizer_in(source)
    with open_weights(source, allow_pickle=allow_pickle) as reader:
        cfg = converted_config(family, hf_config, destination, dtype or "float32", tokenizer)
        source_dtype = stored_dtype(reader, [n for n in reader.names() if not family.ignored(n, cfg.model)])
        if dtype is None:
            if source_dtype not in ("float32", "bfloat16", "float16"):
                raise UserError(
                    f"{source}: the weights are stored in {source_dtype}; pass --dtype float32, bfloat16 or float16"
                )
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, param_dtype=source_dtype))
        groups = family.groups(cfg.model)
        shapes = param_shapes(cfg)
        expected = hf_tensor_shapes(groups, shapes, cfg.model.num_layers)
        check_tensors(reader, expected, family, cfg, source)
        progress.reset(total=len(expected))
        writer = StreamingCheckpointWriter(staging, step=0)
        for group in groups:
            writer.write(_assemble(group, reader, shapes, cfg.model.num_layers, progress))
            release_freed_memory()
        writer.close()
    if tokenizer:
        copy_tokenizer(tokenizer, staging)
    dump_config(cfg, staging / "config.yaml")
    return cfg, source_dtype


def _assemble(group: TensorGroup, reader, shapes, num_layers: int, progress: tqdm) -> dict:
    """The group's meshtrain parameters, filled one layer's source tensors at a time."""
    params = {path: np.empty(*shapes[path]) for path in group.params}
    for layer in group.layers(num_layers):
        names = group.hf_names_at(layer)
        hf = []
        for name in names:
            hf.append(reader.read(name))
            progress.set_postfix_str(name, refresh=False)
            progress.update()
        for path, value in zip(group.params, group.to_meshtrain(*hf)):
            target = params[path] if layer is None else params[path][layer]
            target[...] = np.asarray(value)  # casts into the parameter dtype without a copy
    return params
