"""Where the shipped config files live (configs/ at the repository root, next to the packages)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
BASE_YAML = CONFIG_DIR / "base.yaml"
MODEL_PRESET_DIR = CONFIG_DIR / "model"
EXPERIMENT_DIR = CONFIG_DIR / "experiment"
GIN_DIR = CONFIG_DIR / "gin"
