"""Running a run: `train()` (train.py) and what it drives: the run directory, checkpoints, initial
weights, the prefetching batch thread and multi-process start-up."""
