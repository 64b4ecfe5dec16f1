"""The abstract decoder of a config, and its parameter counts: shapes only, so even PaLM 540B counts\ninstantly."""

from __future__ import annotations

import dataclasses
import math

from flax import nnx

from meshtrain.model.config import ModelConfig
from meshtrain.model.decoder import Decoder

# Top-level Decoder attributes whose parameters are embeddings: the token table (and learned
# positions) and, when untied, the output projection.
_EMBEDDING_MODULES = ("embed", "unembed")


@dataclasses.dataclass(frozen=True)
class ParamCount:
    """total = embedding + non_embedding; norm (scales and biases of every norm) is part of
    non_embedding, reported apart because papers differ on whether they count it."""

    total: int
    embedding: int
    norm: int
    non_embedding: int


def abstract_decoder(cfg: ModelConfig) -> Decoder:
    """Decoder(cfg) with ShapeDtypeStructs for arrays: its structure, shapes, dtypes and axis names,
    with nothing allocated (PaLM 540B takes a fraction of a second)."""
    return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))


def count_params(cfg: ModelConfig) -> ParamCount:
    """Counts the parameters Decoder(cfg) would have, without allocating any of them."""
    abstract = abstract_decoder(cfg)
    total = embedding = norm = 0
    for path, param in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        size = math.prod(param.shape)
        total += size
        if path[0] in _EMBEDDING_MODULES:
            embedding += size
        elif any(str(name).endswith("norm") for name in path):
            norm += size
    return ParamCount(total=total, embedding=embedding, norm=norm, non_embedding=total - embedding)
