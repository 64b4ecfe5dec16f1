"""Experiment configuration: one typed tree (schema.py), reached from YAML, gin and `key=value`.

load_experiment resolves base.yaml -> preset -> experiment -> overrides; config_to_dict,
config_from_dict, dump_config and load_config_file move a resolved config to and from a run
directory; config_differences tells whether a saved run and a new config are the same run.
"""

from meshtrain.trainer.config.loader import experiment_names, load_experiment
from meshtrain.trainer.config.presets import model_preset, preset_fields, preset_names
from meshtrain.trainer.config.schema import (
    RUN_IDENTITY_SECTIONS,
    CheckpointConfig,
    DataConfig,
    ExperimentConfig,
    OptimizerConfig,
    TrainConfig,
)
from meshtrain.trainer.config.serialize import (
    config_differences,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config_file,
)

__all__ = [
    "load_experiment",
    "experiment_names",
    "model_preset",
    "preset_fields",
    "preset_names",
    "config_to_dict",
    "config_from_dict",
    "dump_config",
    "load_config_file",
    "config_differences",
    "RUN_IDENTITY_SECTIONS",
    "CheckpointConfig",
    "DataConfig",
    "ExperimentConfig",
    "OptimizerConfig",
    "TrainConfig",
]
