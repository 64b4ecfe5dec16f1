"""How long one training step takes on chips nobody has measured yet: a performance model from first
principles, fed only by the published chip and network figures of configs/hardware.yaml.

    predict_step(work, layout, spec, family, peak_flops, hbm_bytes_per_s)  # -> StepPrediction
    (experiment_prediction.py builds work and layout from an experiment)

One step is the sum, per chip, of
- compute: every matmul of the block (projections, MLP, attention, logits) at the chip's peak times
  its matmul ceiling (measured where a shape search is published, else fitted to the kind's published
  runs: hardware.yaml) times the family's matmul efficiency times a
  shape factor (each dimension padded to the matrix unit's tile), or at HBM bandwidth where its
  bytes take longer than its FLOPs (the roofline). Fused
  (flash / splash) attention runs at attention_efficiency of that rate and skips the causal half
  (drawing dropout inside it, at the family's dropout efficiencies of that rate);
  dense attention writes its T x T scores to HBM and pays for the softmax passes over them;
- memory-bound work: the bytes norms, residual adds, rotary embeddings, activations, the
  cross-entropy (fused, or pass by pass for runs that say eager_cross_entropy), dropout masks (runs
  that say dropout) and the optimizer update move through HBM, at the family's hbm_efficiency (the
  norms and residual adds on every tensor rank, or on a 1/tensor share of the tokens for runs that
  say sequence_parallel);
- exposed communication, per mesh axis, as ring collectives over the links that axis spans
  (trainer/planning/network.py: ICI inside a slice or server, DCN across; a torus axis gets 2 links
  per torus dimension it covers):
    fsdp      all-gather each layer's weights in the forward and again in the backward pass, and
              reduce-scatter its gradient, once per microbatch; prefetched a layer ahead, so hidden
              up to fsdp_overlap of that layer's compute
    tensor    all-reduce the block's activations (1 per layer for a parallel block, 2 sequential) in
              the forward pass, again in the backward and in a full-remat replay; tensor_overlap of
              it hidden, or, for a run that decomposes them into its matmuls (collective_matmul:
              Megatron-Core's --tp-comm-overlap), all of it that the layer's matmuls outlast
    sequence  all-gather keys and values per layer (and reduce-scatter their gradients); exposed
    data      all-reduce the gradient shard once per step, hidden up to data_overlap of the last
              microbatch's backward pass, but for its tail: the input embedding's and the first
              layer's gradients come last, with nothing left to hide behind
- a pipeline bubble of (stages - 1) / virtual stages slots, each a stage's whole microbatch (its
  collectives and gradient accumulation too: what a neighbour waits for), only for
  published runs that used pipeline parallelism (meshtrain has none: see README, "Plan"); published
  runs that sharded the optimizer over their data replicas (ZeRO-1) say so in `optimizer_sharded`;
- op_overhead_s per launched op (the floor small models and CPUs hit);
- the wait for the slowest of the N slices (TPU) or servers (GPU) the step joins over DCN: each
  one's step varies by straggler_spread of itself, and a synchronous step ends when the last one
  does, the expected maximum of N normal draws. The TPU family's is fitted (MaxText loses more MFU
  from 1 to 32 slices than the DCN bytes explain); the NVIDIA rows show none.

The FLOPs are trainer/planning/flops.py's (model FLOPs for MFU, hardware FLOPs with remat for HFU),
so the tracker, `meshtrain cost` and this model agree on what a FLOP is.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping

from meshtrain.model.config import ModelConfig
from meshtrain.sharding.mesh import MESH_AXES
from meshtrain.trainer.config.hardware import EfficiencyFamily, HardwareSpec
from meshtrain.trainer.formatting import format_mesh
from meshtrain.trainer.planning.chip_rates import ChipRates
from meshtrain.trainer.planning.flops import (
    full_remat_skips,
    hardware_flops_per_token,
    model_flops_per_token,
    param_count,
)
from meshtrain.trainer.planning.network import gather_seconds

ATTENTION_KERNELS = ("flash", "dense")  # fused, causal blocks skipped | scores materialized in HBM


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one step computes: the model, tokens per sequence and sequences per step."""

    model: ModelConfig
    seq_len: int
    batch: int  # global sequences per optimizer step
    compute_bytes: int = 2  # bytes of an activation / gathered weight (bf16)
    param_bytes: int = 4  # bytes of a stored parameter (float32)
    gradient_bytes: int = 2  # bytes of a gradient as it is reduced: the compute dtype's (XLA reduces the
    # bf16 gradient of the cast weight before converting it; Megatron-LM and DeepSpeed reduce 16-bit ones)
    optimizer_bytes_per_param: int = 8  # Adam's two float32 moments (Adafactor unfactored + momentum: 8 too)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a step is laid out: mesh axis sizes inside a slice / server (ici) and across (dcn),
    gradient accumulation, the remat policy and the attention kernel."""

    ici: Mapping[str, int]
    dcn: Mapping[str, int]
    microbatches: int = 1
    remat: str = "full"
    attention: str = "flash"
    pipeline: int = 1  # stages; published runs only (meshtrain has no pipeline parallelism)
    pipeline_virtual: int = 1  # interleaved stages per chip (Megatron's virtual pipeline)
    optimizer_sharded: bool = False  # ZeRO-1: each data replica updates only its share; published runs only
    collective_matmul: bool = False  # tensor collectives run under the layer's matmuls (Megatron-Core's
    # --tp-comm-overlap); published runs only: without it the family's tensor_overlap share is hidden
    fused_accumulation: bool = False  # microbatch gradients summed inside the weight-gradient matmuls
    # (Megatron's --gradient-accumulation-fusion), not in a pass of their own; published runs only
    eager_cross_entropy: bool = False  # the loss in separate float32 passes over the logits (Megatron-LM's
    # vocab-parallel cross entropy), not one fused kernel: _CROSS_ENTROPY_BYTES; published runs only
    sequence_parallel: bool = False  # norms and residual adds split over the tensor ranks by token
    # (Megatron's --sequence-parallel; its collectives move the same bytes); published runs only
    dropout: bool = False  # hidden and attention dropout (Megatron-LM's default 0.1): masks drawn, written
    # and read again in the backward, or drawn inside a fused attention kernel; published runs only

    def size(self, axis: str) -> int:
        return self.ici.get(axis, 1) * self.dcn.get(axis, 1)

    @property
    def chips(self) -> int:
        return math.prod(self.size(a) for a in MESH_AXES) * self.pipeline

    def describe(self) -> str:
        """'fsdp=256 x tensor=12, data=2 over DCN' (axes of size 1 left out)."""
        inside = format_mesh({**self.ici, **({"pipeline": self.pipeline} if self.pipeline > 1 else {})})
        across = format_mesh(self.dcn)
        return inside if across == format_mesh({}) else f"{inside}, {across} over DCN"


@dataclasses.dataclass(frozen=True)
class StepPrediction:
    """A predicted step: seconds per part (compute, memory-bound, exposed communication by axis and
    network, overheads), their sum, and what follows from it."""

    parts: Mapping[str, float]
    step_s: float
    tokens_per_s: float
    mfu: float
    hfu: float
    chips: int

    @property
    def bottleneck(self) -> str:
        """The largest part after matmul compute, in words with its share of the step ("exposed fsdp
        all-gather/reduce-scatter over dcn: 31% of the step"); compute-bound when matmuls dominate."""
        others = {name: s for name, s in self.parts.items() if not name.startswith("compute")}
        compute = sum(s for name, s in self.parts.items() if name.startswith("compute"))
        name, seconds = max(others.items(), key=lambda item: item[1], default=("", 0.0))
        if seconds < 0.1 * self.step_s:
            return f"compute-bound: matmuls {compute / self.step_s:.0%} of the step"
        return f"{name}: {seconds / self.step_s:.0%} of the step"

    def as_dict(self) -> dict:
        return {
            "step_s": self.step_s,
            "tokens_per_s": self.tokens_per_s,
            "mfu": self.mfu,
            "hfu": self.hfu,
            "bottleneck": self.bottleneck,
            "parts_s": dict(self.parts),
        }


def _exposed(comm: float, hiding_compute: float, overlap: float) -> float:
    return max(0.0, comm - overlap * hiding_compute)


def _layer_shapes(model: ModelConfig, tensor: int) -> dict[str, tuple[int, int]]:
    """(in, out) of each weight matrix of one block on one tensor shard. Key/value heads that the
    tensor axis cannot split are replicated (each shard computes them whole)."""
    heads = math.ceil(model.num_heads / tensor)
    kv = model.num_kv_heads // tensor if model.num_kv_heads % tensor == 0 else model.num_kv_heads
    ff = math.ceil(model.d_ff / tensor)
    gates = 2 if model.mlp == "swiglu" else 1
    e, q = model.d_model, model.head_dim
    return {
        "q": (e, heads * q),
        "kv": (e, 2 * kv * q),
        "out": (heads * q, e),
        "mlp_in": (e, gates * ff),
        "mlp_out": (ff, e),
    }


def _replayed(model: ModelConfig, remat: str) -> set[str]:
    """Matmuls a remat policy runs again in the backward pass (flops.py's accounting): full replays
    the block except the outputs only the residual sum reads; save_dots keeps every projection."""
    if remat != "full":
        return set()
    return {"q", "kv", "out", "mlp_in", "mlp_out"} - full_remat_skips(model)


# Bytes through HBM per logit for the loss and its gradient. Fused (XLA, one kernel each way): the
# float32 logits written, read twice, the gradient written, 4 x 4. Eager, as Megatron-LM's
# vocab-parallel cross entropy runs it (megatron/core/tensor_parallel/cross_entropy.py), pass by pass:
# cast to float32 (read 2, write 4), max (4), subtract in place (8), exp in place (8), sum (4), divide
# in place (8); backward: multiply in place (8), cast back to bf16 (6): 52.
_CROSS_ENTROPY_BYTES = {False: 16, True: 52}

# Launched ops per layer and pass (matmuls plus fused elementwise groups, counted from the block's
# jaxpr: ~7 matmuls and ~8 fusions forward); the backward pass launches about twice as many.
_OPS_FORWARD = 15


@dataclasses.dataclass(frozen=True)
class _Microbatch:
    """Seconds one chip spends on one microbatch, by kind, and what can hide collectives."""

    layer_forward: float  # one layer's matmuls and attention, forward
    layer_backward: float  # ... backward, with whatever remat replays
    layer_memory_forward: float  # one layer's memory-bound work, forward
    layer_memory: float  # ... forward, backward and replay
    compute: float  # every layer's matmuls and attention plus the logits
    memory: float  # every layer's memory-bound work plus the cross-entropy
    ops: float  # launched ops


def _dropout_bytes(cb: int, fused: bool, replayed: bool) -> int:
    """HBM bytes per element a dropout adds over a layer's passes: forward, its 1-byte mask written
    (and, in a pass of its own, its input read and output written); backward, the gradient and the
    mask read and the gradient written; a replay draws and writes the mask again."""
    forward = 1 if fused else 2 * cb + 1
    return forward + 2 * cb + 1 + (forward if replayed else 0)


def _passes(remat: str) -> int:
    """Forward-sized passes over a layer: forward, backward (twice the forward) and a full replay."""
    return 3 + (1 if remat == "full" else 0)


def _microbatch(work: Workload, layout: Layout, chip: ChipRates, rows: float, layers: float) -> _Microbatch:
    """Compute and memory-bound time of one microbatch of `rows` tokens per chip."""
    model, T, cb = work.model, work.seq_len, work.compute_bytes
    shapes = _layer_shapes(model, layout.size("tensor"))
    replay = _replayed(model, layout.remat)
    forward = backward = replayed = 0.0
    for name, (k, n) in shapes.items():
        f, b = chip.trained_matmul_s(rows, k, n, cb)
        forward, backward, replayed = forward + f, backward + b, replayed + (f if name in replay else 0.0)
    heads = shapes["q"][1] // model.head_dim
    attention_flops = 4.0 * rows * T * model.head_dim * heads  # q.k and p.v against every key, forward
    scores_memory = 0.0
    if layout.attention == "flash":
        rate = chip.matmul_flops * chip.family.attention_efficiency * chip.padded_share(model.head_dim)
        attention = 0.5 * attention_flops / rate  # causal: the masked half of the blocks is skipped
        attention_backward = 2.5 * attention  # the backward kernel recomputes the scores (5 matmuls to 2)
        if layout.dropout:  # the mask drawn inside the kernel, forward and again backward
            attention /= chip.family.dropout_forward_efficiency
            attention_backward /= chip.family.dropout_backward_efficiency
    else:
        attention = 2 * chip.matmul_s(rows, model.head_dim, T, cb) * heads
        attention_backward = 2 * attention
        scores_memory = 4.0 * heads * rows * T * cb / chip.hbm  # write, read, write, read the scores
    attention_replay = attention if layout.remat in ("full", "save_dots") else 0.0
    # Bytes through HBM per token and layer, forward: norms and residual adds over d_model (a
    # sequential block has two of each; each tensor rank does its share of the tokens under sequence
    # parallelism, all of them without), the MLP activation over its hidden width, rotary on q and k.
    residual = (10 if model.block == "sequential" else 6) * model.d_model
    token_share = layout.size("tensor") if layout.sequence_parallel else 1  # ranks the per-token work is split over
    widths = (
        residual / token_share
        + (3 if model.mlp == "swiglu" else 2) * shapes["mlp_out"][0]
        + 2 * (shapes["q"][1] + shapes["kv"][1] // 2)
    )
    memory_forward = cb * rows * widths / chip.hbm + scores_memory
    layer_memory = memory_forward * _passes(layout.remat)
    if layout.dropout:  # two hidden dropouts, fused into the residual adds (Megatron's bias-dropout-add)
        hidden = 2 * model.d_model / token_share
        layer_memory += rows * hidden * _dropout_bytes(cb, fused=True, replayed=layout.remat == "full") / chip.hbm
        if layout.attention == "dense":  # a pass of its own over the scores, replayed with the attention
            scores = rows * heads * T * _dropout_bytes(cb, fused=False, replayed=attention_replay > 0)
            layer_memory += scores / chip.hbm
    vocab = math.ceil(model.vocab_size / layout.size("tensor"))
    logits_forward, logits_backward = chip.trained_matmul_s(rows, model.d_model, vocab, cb)
    cross_entropy = _CROSS_ENTROPY_BYTES[layout.eager_cross_entropy] * rows * vocab / chip.hbm
    layer_forward = forward + attention
    layer_backward = backward + attention_backward + replayed + attention_replay
    return _Microbatch(
        layer_forward=layer_forward,
        layer_backward=layer_backward,
        layer_memory_forward=memory_forward,
        layer_memory=layer_memory,
        compute=layers * (layer_forward + layer_backward) + logits_forward + logits_backward,
        memory=layers * layer_memory + cross_entropy,
        ops=layers * _OPS_FORWARD * _passes(layout.remat) + 20,
    )


def _communication(
    work: Workload,
    layout: Layout,
    spec: HardwareSpec,
    family: EfficiencyFamily,
    mb: _Microbatch,
    rows: float,
    layers: float,
) -> dict[str, float]:
    """Exposed seconds of each collective per step, named by axis and network."""
    model, cb, M = work.model, work.compute_bytes, layout.microbatches
    t, pp = layout.size("tensor"), layout.pipeline
    count = param_count(model)
    layer_params = (count.total - count.embedding) / model.num_layers
    exposed: dict[str, float] = {}

    def ring(axis: str, full_bytes: float) -> dict[str, float]:  # seconds by network of one ring gather
        return gather_seconds(spec, family, layout.ici, layout.dcn, axis, full_bytes)

    if layout.size("fsdp") > 1:
        per_layer = ring("fsdp", layer_params / t * cb)
        embedding = ring("fsdp", count.embedding / t * cb)
        hide_forward = mb.layer_forward + mb.layer_memory_forward  # the layer computed while the next one arrives
        hide_backward = mb.layer_backward + mb.layer_memory - mb.layer_memory_forward
        for net, gather in per_layer.items():
            seconds = layers * (
                _exposed(gather, hide_forward, family.fsdp_overlap)
                + _exposed(2 * gather, hide_backward, family.fsdp_overlap)  # gather again, reduce-scatter
            )
            seconds += gather + 3 * embedding[net]  # the first layer's and the embedding's: nothing to hide behind
            exposed[f"exposed fsdp all-gather/reduce-scatter over {net}"] = M * seconds
    if t > 1:
        per_pass = 1 if model.block != "sequential" else 2
        backward_passes = _passes(layout.remat) - 2  # the backward's reductions, and a full-remat replay's
        for net, seconds in ring("tensor", rows * model.d_model * cb).items():
            # An all-reduce moves twice a gather's bytes (reduce-scatter, then all-gather).
            forward, backward = 2 * seconds * per_pass, 2 * seconds * per_pass * backward_passes
            if layout.collective_matmul:  # each one runs while the layer's matmuls do
                per_layer = _exposed(forward, mb.layer_forward, 1.0) + _exposed(backward, mb.layer_backward, 1.0)
            else:
                per_layer = (1 - family.tensor_overlap) * (forward + backward)
            embedding_and_logits = 2 * 2 * seconds * (1 - family.tensor_overlap)
            exposed[f"exposed tensor all-reduce over {net}"] = M * (layers * per_layer + embedding_and_logits)
    if layout.size("sequence") > 1:
        kv_width = _layer_shapes(model, t)["kv"][1]
        keys_values = rows * layout.size("sequence") * kv_width * cb  # the whole sequence's keys and values
        for net, seconds in ring("sequence", keys_values).items():
            exposed[f"exposed sequence all-gather over {net}"] = M * layers * seconds * (_passes(layout.remat) - 1)
    if layout.size("data") > 1:
        per_chip = work.gradient_bytes / layout.size("fsdp") / t
        tail = ring("data", (model.vocab_size * model.d_model + layer_params) * per_chip)  # reduced last
        for net, seconds in ring("data", count.total / pp * per_chip).items():
            hide = layers * mb.layer_backward  # the last microbatch's backward pass
            exposed[f"exposed data all-reduce over {net}"] = max(
                _exposed(2 * seconds, hide, family.data_overlap), 2 * min(tail[net], seconds)
            )
    return {name: s for name, s in exposed.items() if s > 0}


def expected_slowest(domains: int) -> float:
    """Expected maximum of `domains` standard normal draws (Blom's approximation, within 5% of the
    exact value for every N): 0 for one domain, 0.59 for 2, 2.04 for 32, 3.0 for 512."""
    if domains <= 1:
        return 0.0
    return statistics.NormalDist().inv_cdf((domains - 0.375) / (domains + 0.25))


def predict_step(
    work: Workload,
    layout: Layout,
    spec: HardwareSpec,
    family: EfficiencyFamily,
    peak_flops: float,
    hbm_bytes_per_s: float,
) -> StepPrediction:
    """The predicted step of `work` laid out as `layout` on `spec` chips (module docstring)."""
    chip = ChipRates(spec, family, peak_flops, hbm_bytes_per_s)
    M, pp = layout.microbatches, layout.pipeline
    replicas = layout.size("data") * layout.size("fsdp")
    rows = work.batch * work.seq_len / replicas / layout.size("sequence") / M  # tokens per chip and microbatch
    layers = work.model.num_layers / pp
    mb = _microbatch(work, layout, chip, rows, layers)
    local_params = param_count(work.model).total / pp / layout.size("fsdp") / layout.size("tensor")
    updated = local_params / (layout.size("data") if layout.optimizer_sharded else 1)
    update_bytes = updated * (3 * work.param_bytes + 2 * work.optimizer_bytes_per_param)
    # Summing microbatch gradients reads, adds and writes the float32 sum, unless the matmuls do it.
    accumulate_bytes = 0 if layout.fused_accumulation else (M - 1) * local_params * 3 * work.param_bytes
    parts = {
        **_communication(work, layout, spec, family, mb, rows, layers),
        "compute: matmuls and attention": M * mb.compute,
        "memory-bound: norms, activations, softmax": M * mb.memory,
        "optimizer update": (update_bytes + accumulate_bytes) / chip.hbm,
        "op launch overhead": (M * mb.ops + 50) * family.op_overhead_s,
    }
    if pp > 1:
        # A bubble slot is a stage's whole microbatch, what its neighbour waits for: every part the step
        # pays per microbatch (the data reduction and the update are paid once per step).
        once = {"optimizer update", "op launch overhead", *(n for n in parts if n.startswith("exposed data"))}
        slot = (sum(s for n, s in parts.items() if n not in once) + accumulate_bytes / chip.hbm) / M
        parts["pipeline bubble"] = (slot + mb.ops * family.op_overhead_s) * (pp - 1) / layout.pipeline_virtual
    step = sum(parts.values())
    domains = math.prod(layout.dcn.get(a, 1) for a in MESH_AXES)  # slices / servers joined over DCN
    if domains > 1 and family.straggler_spread > 0:
        wait = step * family.straggler_spread * expected_slowest(domains)
        parts["waiting for the slowest slice or server"] = wait
        step += wait
    tokens_per_s = work.batch * work.seq_len / step
    chips = layout.chips
    mfu = tokens_per_s * model_flops_per_token(work.model, work.seq_len) / (chips * peak_flops)
    hfu = tokens_per_s * hardware_flops_per_token(work.model, work.seq_len, layout.remat) / (chips * peak_flops)
    return StepPrediction(parts=parts, step_s=step, tokens_per_s=tokens_per_s, mfu=mfu, hfu=hfu, chips=chips)
