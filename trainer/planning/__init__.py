"""Planning a run before it starts: the FLOPs and memory arithmetic the live tracker and `meshtrain cost`
share, hardware peaks, the AOT compile for a TPU topology, and the cost estimate with its fit search.

Conventions
-----------
Model FLOPs utilization (MFU) is the throughput a run achieves, in model FLOPs, over the chips' peak:
tokens/s x model FLOPs per token / (chips x peak FLOP/s). Model FLOPs are fixed by the model and the
sequence length, never by how the step is implemented, so MFU compares runs, codebases and hardware.
Hardware FLOPs utilization (HFU) counts instead what the chips execute, including the forward work
rematerialization redoes in the backward pass; HFU >= MFU, and a better remat policy can raise MFU
while lowering HFU. Both were defined by PaLM (Chowdhery et al. 2022, "PaLM: Scaling Language
Modeling with Pathways", arXiv 2204.02311, Section 4.1 and Appendix B), whose 540B run reached 46.2%
MFU (45.7% without the attention term) and 57.8% HFU on 6144 TPU v4 chips.

Appendix B counts 6N + 12 L H Q T training FLOPs per token: 6N for the matmuls with weights (2N
forward, 4N backward) and 12 L H Q T for attention's two matmuls with activations (q.k^T and p.v,
4 L H Q T forward), N being all parameters, embeddings included (with PaLM's tied embedding, the output
projection is the embedding: 6 x 540.35B reproduces the published 45.7%; 6 x the non-embedding
535.6B would give 45.3%). The attention term is not halved for the causal mask because dense
attention kernels compute the whole T x T score matrix and mask it afterwards: the FLOPs are spent.
The conventions offered (flops.FLOPS_CONVENTIONS):

  palm    6N + 12 L H Q T   (default) PaLM Appendix B.
  causal  6N + 6 L H Q T    attention halved: the FLOPs a causal (flash/splash) kernel needs, the
                            count some codebases report.
  6nd     6N                Kaplan et al. 2020, GPT-3 (3.14e23 FLOPs for 175B x 300B tokens) and
                            Chinchilla: attention ignored.

Public names: flops (FLOPS_CONVENTIONS, model_flops_per_token, hardware_flops_per_token,
flops_breakdown, utilization) and memory (MemoryEstimate, memory_per_chip).

Predicting a step before it runs (`meshtrain plan`): performance (the model: compute, memory-bound
work and exposed collectives per axis, from configs/hardware.yaml; network: the ring collectives'
seconds over a kind's links), experiment_prediction (an
experiment's workload and layout for it), layout_search (every layout that fits, ranked),
calibrate (fitting the family efficiencies to measured steps) and published (the model against
configs/published_runs.yaml).
"""
