"""meshtrain -> Hugging Face: safetensors and config.json that `AutoModelForCausalLM` loads.

The family (Llama or GPT-NeoX) is the one that expresses the model exactly; a model neither can
express is refused with the settings that stand in the way. Files are planned up front from the
shapes alone (sharded above 5 GiB, with an index, as transformers writes them) and filled one
meshtrain parameter at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from meshtrain.trainer.convert.families import family_for_model
from meshtrain.trainer.convert.family_base import TensorGroup, hf_tensor_shapes
from meshtrain.trainer.convert.meshtrain_format import (
    param_shapes,
    read_param,
    release_freed_memory,
)
from meshtrain.trainer.convert.safetensors_writer import SafetensorsWriter
from meshtrain.trainer.data.tokenizer_kinds import copy_tokenizer, load_tokenizer
from meshtrain.trainer.run.saved_weights import SavedCheckpoint, carried_tokenizer


def convert_to_hf(
    saved: SavedCheckpoint, staging: Path, *, dtype: str | None, architecture: str | None, progress: tqdm
) -> str:
    """Writes the Hugging Face model of `saved` into `staging`; returns the architecture.
    `progress` counts the tensors written."""
    model = saved.config.model
    family = family_for_model(model, architecture)
    out_dtype = np.dtype(jnp.dtype(dtype or model.param_dtype))
    shapes = {path: (shape, out_dtype) for path, (shape, _) in param_shapes(saved.config).items()}
    groups = family.groups(model)
    specs = [(name, shape, out_dtype) for name, shape in hf_tensor_shapes(groups, shapes, model.num_layers).items()]
    progress.reset(total=len(specs))
    with SafetensorsWriter(staging, specs) as writer:
        for group in groups:
            _write_group(writer, group, saved, shapes, model.num_layers, progress)
            release_freed_memory()
    hf_config = family.hf_config(model, out_dtype.name)
    tokenizer = carried_tokenizer(saved)
    if tokenizer:
        hf_config.update(_special_tokens(tokenizer))
        copy_tokenizer(tokenizer, staging)  # a .model goes under the name Llama's loaders look for
    (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return family.architecture


def _write_group(
    writer: SafetensorsWriter, group: TensorGroup, saved: SavedCheckpoint, shapes, num_layers: int, progress: tqdm
) -> None:
    """Writes one group's Hugging Face tensors; its parameters are freed when this returns (a slice
    of a stacked parameter kept alive past it would keep the whole stack in memory)."""
    params = [read_param(saved, path, *shapes[path]) for path in group.params]
    for layer in group.layers(num_layers):
        per_layer = params if layer is None else [p[layer] for p in params]
        for name, value in zip(group.hf_names_at(layer), group.to_hf(*per_layer)):
            writer.write(name, np.asarray(value, shapes[group.params[0]][1]))
            progress.set_postfix_str(name, refresh=False)
            progress.update()


def _special_tokens(tokenizer_file: str) -> dict:
    """bos/eos/pad ids of the run's tokenizer, for config.json."""
    tokenizer = load_tokenizer(tokenizer_file)
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    return {key: value for key, value in ids.items() if value is not None}
