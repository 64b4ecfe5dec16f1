"""Experiment configuration: one typed tree (schema.py), reached from YAML, gin and `key=value`."""

from trainer.config.presets import model_preset
from trainer.config.schema import (CheckpointConfig, DataConfig, ExperimentConfig, OptimizerConfig,
                                   TrainConfig)

__all__ = ["model_preset", "CheckpointConfig", "DataConfig", "ExperimentConfig", "OptimizerConfig",
           "TrainConfig"]
