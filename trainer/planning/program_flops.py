"""FLOPs of a traced program, counted from its jaxpr: what the compiled step will execute.

XLA's cost analysis counts the body of a loop once, whatever its trip count, so a scanned 118-layer
model is undercounted 118x; in a jaxpr every scan carries its length. Only dot products are
counted (all but a fraction of a percent of a transformer's arithmetic), 2 FLOPs per multiply-add,
in global shapes: divided by the chip count this assumes the work is evenly split, which sharded
matmuls are (replicated ones, such as a multi-query key/value projection under tensor parallelism,
run on every chip of their group and are counted once). A Pallas kernel (fused attention) counts its
body once per grid point, skipped blocks included, as the dense program counts masked scores; a loop
inside a body whose trip count is only known at run time (Pallas GPU flash attention's) counts once.

This measures a program; trainer/planning predicts from a config. Tests hold the two together.
"""

from __future__ import annotations

import math

from jax.extend import core as jcore


def jaxpr_flops(jaxpr) -> int:
    """Dot-product FLOPs of a jaxpr in global shapes (shard_map bodies scaled up to all shards)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(jaxpr_flops(branch.jaxpr) for branch in eqn.params["branches"])
        elif name == "pallas_call":  # a fused kernel: its body runs once per grid point
            grid = eqn.params["grid_mapping"].grid
            total += math.prod(grid) * jaxpr_flops(eqn.params["jaxpr"])
        elif name == "shard_map":
            mesh = eqn.params["mesh"]
            shards = math.prod(mesh.shape[a] for a in eqn.params["newly_manual_axes"])
            total += shards * jaxpr_flops(eqn.params["jaxpr"])
        else:  # pjit, remat, custom_jvp/vjp calls, while (trip count unknown: once) ...
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(sub, jcore.ClosedJaxpr):
                        total += jaxpr_flops(sub.jaxpr)
                    elif isinstance(sub, jcore.Jaxpr):
                        total += jaxpr_flops(sub)
    return total
