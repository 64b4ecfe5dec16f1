"""The library under the command lines, one sub-package per job, importing only downward:

  config    experiment files, the schema, shipped tables (hardware.yaml) and the batch schedule
  data      TFDS builders, tokenizers, packed batches read through grain
  step      optimizer, train state, the step functions and their partition over a mesh
  planning  FLOPs and memory arithmetic, hardware peaks, AOT compiles, the cost estimate
  tracking  the live tracker, goodput, metrics log, report and plots, Weights & Biases
  run       train(): the run directory, checkpoints, initial weights, multi-process start-up
  convert   checkpoints to and from Hugging Face, dtypes and meshes
  launch    multi-host launch recipes and the pre-launch check

storage (local paths and object-store URLs as one type), errors.py and formatting.py serve them all.
"""
