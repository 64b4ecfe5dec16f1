"""One training step and where it runs: the optimizer, the train state as a pytree, the pure train
and eval step functions, and their partition over a device mesh (shardings and jit)."""
