"""The Hugging Face families meshtrain converts, and which one a config.json or a model belongs to.

A family (family_base.Family) is three things: which meshtrain models it can express
(`fit_errors`), how its config.json maps to a ModelConfig and back, and how its tensors map to
meshtrain parameters; family_llama.py and family_neox.py are the two there are.
"""

from __future__ import annotations

from meshtrain.model.config import ModelConfig
from meshtrain.trainer.convert.family_base import Family
from meshtrain.trainer.convert.family_llama import Llama
from meshtrain.trainer.convert.family_neox import GPTNeoX
from meshtrain.trainer.errors import UserError

FAMILIES = (Llama(), GPTNeoX())


def family_for_architectures(architectures) -> Family:
    """The family config.json's `architectures` names, or an error naming the supported ones."""
    names = list(architectures or [])
    for family in FAMILIES:
        if family.architecture in names:
            return family
    raise UserError(
        f"config.json: architectures {names} is not supported; supported: {', '.join(f.architecture for f in FAMILIES)}"
    )


def family_for_model(cfg: ModelConfig, architecture: str | None = None) -> Family:
    """The family that expresses `cfg` exactly (`architecture` picks one), or an error saying, for
    each family, which model settings it cannot express."""
    candidates = [f for f in FAMILIES if architecture in (None, f.architecture)]
    if not candidates:
        raise UserError(
            f"--architecture {architecture!r} is not supported; supported: "
            f"{', '.join(f.architecture for f in FAMILIES)}"
        )
    reasons = []
    for family in candidates:
        errors = family.fit_errors(cfg)
        if not errors:
            return family
        reasons.append(f"{family.architecture} needs {', '.join(errors)}")
    raise UserError("this model has no Hugging Face equivalent: " + "; ".join(reasons))
