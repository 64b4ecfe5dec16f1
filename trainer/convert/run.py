"""One conversion from start to finish: what the source is, where it goes, checks, verify, summary."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm import tqdm

from meshtrain.model.params import count_params
from meshtrain.trainer.convert import from_hf, reshard, to_hf, verify
from meshtrain.trainer.convert.meshtrain_format import param_shapes
from meshtrain.trainer.convert.output import check_destination, staged_directory
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.run.saved_weights import CONFIG_FILE, find_checkpoint
from meshtrain.trainer.storage.paths import is_url

HF, MESHTRAIN = "hf", "meshtrain"
_FORMAT_NAMES = {HF: "Hugging Face", MESHTRAIN: "meshtrain"}


def source_format(source) -> str:
    """hf for a directory with config.json; meshtrain for a run-shaped one (config.yaml)."""
    if (source / "config.json").is_file() and not (source / CONFIG_FILE).is_file():
        if is_url(source):
            raise UserError(
                f"{source}: a Hugging Face source is read from a local directory (safetensors are memory-mapped): "
                "copy it to local disk first"
            )
        return HF
    if not source.exists():
        raise UserError(f"{source}: no such file or directory")
    return MESHTRAIN


def _lossless(source_dtype: str, dtype: str) -> bool:
    """True when every value of source_dtype is exactly representable in dtype."""
    source, target = jnp.dtype(source_dtype), jnp.dtype(dtype)
    return source == target or (target == jnp.float32 and source in (jnp.bfloat16, jnp.float16))


class Conversion:
    """SRC -> DST in one format or the other; every check on the arguments runs on construction,
    before anything is read or written, and `run` stages, converts, verifies and renames."""

    def __init__(
        self,
        source: Path,
        destination: Path,
        *,
        to: str | None,
        dtype: str | None,
        params_only: bool,
        architecture: str | None,
        step: int | None,
        overrides: list[str],
        allow_pickle: bool,
        overwrite: bool,
        progress: bool,
    ):
        self.source, self.destination = source, destination
        self.source_format = source_format(source)
        self.to = to or (MESHTRAIN if self.source_format == HF else HF)
        self.dtype, self.params_only, self.architecture = dtype, params_only, architecture
        self.overrides, self.allow_pickle, self.progress = overrides, allow_pickle, progress
        self.saved = find_checkpoint(source, step) if self.source_format == MESHTRAIN else None
        if self.source_format == HF and self.to == HF:
            raise UserError(f"{source} is a Hugging Face model already; --to hf converts meshtrain checkpoints")
        if step is not None and self.saved is None:
            raise UserError("--step selects a step of a meshtrain source; a Hugging Face source has one")
        if overrides and not (self.saved and self.to == MESHTRAIN):
            raise UserError(
                f"key=value overrides ({' '.join(overrides)}) apply to meshtrain -> meshtrain "
                f"conversions only (e.g. mesh.ici_tensor=2 to reshard)"
            )
        if params_only and not (self.saved and self.to == MESHTRAIN):
            raise UserError(
                "--params-only applies to meshtrain -> meshtrain; the other directions convert parameters only anyway"
            )
        if architecture and self.to != HF:
            raise UserError("--architecture picks the Hugging Face class of a meshtrain -> Hugging Face conversion")
        check_destination(destination, overwrite=overwrite, source=source)
        if HF in (self.source_format, self.to) and not os.environ.get("JAX_PLATFORMS"):
            # Host work: on an accelerator host the converter must not claim device memory that a
            # training job beside it may be using. Resharding (meshtrain -> meshtrain) needs the devices.
            jax.config.update("jax_platforms", "cpu")

    def run(self, *, verify: bool, tolerance: float | None) -> dict:
        summary = {
            "source": str(self.source),
            "destination": str(self.destination),
            "source_format": _FORMAT_NAMES[self.source_format],
            "destination_format": _FORMAT_NAMES[self.to],
        }
        with staged_directory(self.destination) as staging:
            summary.update(self._convert(staging))
            if verify:
                summary.update(
                    self._verify(staging, tolerance, lossless=_lossless(summary["source_dtype"], summary["dtype"]))
                )
            summary["bytes_written"] = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        return summary

    def _bar(self) -> tqdm:
        return tqdm(desc="convert", unit="tensor", disable=not self.progress, dynamic_ncols=True)

    def _convert(self, staging: Path) -> dict:
        if self.source_format == HF:
            with self._bar() as bar:
                cfg, source_dtype = from_hf.convert_from_hf(
                    self.source,
                    staging,
                    self.destination,
                    dtype=self.dtype,
                    allow_pickle=self.allow_pickle,
                    progress=bar,
                )
            return {
                **self._describe(cfg),
                "source_dtype": source_dtype,
                "source_format": f"Hugging Face {cfg.model.name}",
                "next": f"meshtrain train {self.destination / CONFIG_FILE} [key=value ...]",
            }
        if self.to == HF:
            with self._bar() as bar:
                architecture = to_hf.convert_to_hf(
                    self.saved, staging, dtype=self.dtype, architecture=self.architecture, progress=bar
                )
            return {
                **self._describe(self.saved.config, self.dtype),
                "step": self.saved.step,
                "source_dtype": self.saved.config.model.param_dtype,
                "destination_format": f"Hugging Face {architecture}",
            }
        cfg = reshard.target_config(
            self.saved, self.destination, dtype=self.dtype, params_only=self.params_only, overrides=self.overrides
        )
        reshard.convert_meshtrain(self.saved, staging, cfg, params_only=self.params_only)
        return {
            **self._describe(cfg),
            "step": self.saved.step,
            "params_only": self.params_only,
            "source_dtype": self.saved.config.model.param_dtype,
            "next": f"meshtrain train {self.destination / CONFIG_FILE} [key=value ...]",
        }

    @staticmethod
    def _describe(cfg, dtype: str | None = None) -> dict:
        """meshtrain's side of the conversion: its parameter arrays (stacked over layers), their
        total size and dtype."""
        return {
            "tensors": len(param_shapes(cfg)),
            "parameters": count_params(cfg.model).total,
            "dtype": dtype or cfg.model.param_dtype,
        }

    def _verify(self, staging: Path, tolerance: float | None, *, lossless: bool) -> dict:
        """Compares logits; without --tolerance, a conversion that loses no precision must match to
        1e-4 x the largest |logit| (summation order only), and a narrowing cast is reported only."""
        converted = find_checkpoint(staging) if self.to == MESHTRAIN else None
        model = (self.saved or converted).config.model
        tokens = verify.sample_tokens(model.vocab_size, model.max_seq_len)
        if self.source_format == HF:
            reference = verify.hf_logits(self.source, tokens)
        else:
            reference = verify.meshtrain_logits(self.saved, tokens)
        result = verify.compare_logits(
            reference,
            verify.hf_logits(staging, tokens) if converted is None else verify.meshtrain_logits(converted, tokens),
        )
        if tolerance is None and lossless:
            tolerance = 1e-4 * max(1.0, result["max_abs_logit"])
        result["tolerance"] = tolerance
        if tolerance is not None and not result["max_abs_logit_diff"] <= tolerance:
            raise UserError(
                f"--verify failed: the converted model's logits differ from the source's by up "
                f"to {result['max_abs_logit_diff']:.3e} (tolerance {tolerance:.3e}, KL divergence "
                f"{result['kl_divergence']:.3e}); nothing was written to {self.destination}"
            )
        return result
