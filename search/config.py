"""The one schema of a search YAML: every default and range, validated with pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from data_io import DataSpec, SyntheticSpec


class ConfigError(ValueError):
    """A config file cannot be read or is invalid; the message names the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    """Relative paths in a YAML file are relative to the file's folder, not the cwd."""
    if path is None:
        return None
    base = Path((info.context or {}).get("base_dir", "."))
    return (base / Path(path).expanduser()).absolute()


class SyntheticConfig(_Strict):
    n: int = Field(400, ge=10, description="number of images")
    size: int = Field(128, ge=32, le=2048, description="image side, px")
    seed: int = 0
    difficulty: float = Field(0.5, ge=0.0, le=1.0, description="0 separable .. 1 overlapping")
    positive_fraction: float = Field(0.41, gt=0.0, lt=1.0)


class DataConfig(_Strict):
    source: Literal["cgi-hrdc", "flair-csv", "csv", "synthetic"] = "synthetic"
    root: Path | None = None
    task: Literal[1, 2] = 1
    csv: Path | None = None
    classes: tuple[str, ...] = ()
    synthetic: SyntheticConfig = SyntheticConfig()
    image_size: int = Field(512, ge=32, le=4096, description="S, px")
    crop_foreground: bool = False
    folds: int = Field(5, ge=2, le=20)
    fold: int = Field(0, ge=0)
    seed: int = 0
    skip_bad: bool = False
    cache_dir: Path | None = None

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> "DataConfig":
        if self.fold >= self.folds:
            raise ValueError(f"fold must be < folds={self.folds} (got {self.fold})")
        if self.source != "synthetic" and self.root is None:
            raise ValueError(f"root is required for source {self.source!r}")
        if self.source in ("flair-csv", "csv"):
            if self.csv is None:
                raise ValueError(f"csv is required for source {self.source!r}")
            if len(self.classes) < 2:
                raise ValueError(f"classes must list at least two class names for source {self.source!r}")
        for name in ("root", "csv", "cache_dir"):
            object.__setattr__(self, name, _resolve(getattr(self, name), info))
        return self

    def to_spec(self) -> DataSpec:
        return DataSpec(
            source=self.source, root=self.root, task=self.task, csv=self.csv,
            classes=tuple(self.classes), synthetic=SyntheticSpec(**self.synthetic.model_dump()),
            image_size=self.image_size, crop_foreground=self.crop_foreground, folds=self.folds,
            fold=self.fold, seed=self.seed, skip_bad=self.skip_bad, cache_dir=self.cache_dir,
        )


class Config(_Strict):
    """A whole search file."""

    data: DataConfig = DataConfig()


def _describe(error: dict) -> str:
    """One pydantic error as `key.path: what is wrong (got value)`."""
    loc = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
    ctx = error.get("ctx") or {}
    kind = error["type"]
    bounds = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}", "less_than_equal": "<= {le}",
              "less_than": "< {lt}"}
    if kind in bounds:
        what = "must be " + bounds[kind].format(**ctx)
    elif kind == "extra_forbidden":
        what = "unknown key; remove it or fix its spelling"
    elif kind == "value_error":
        what = str(ctx.get("error", error["msg"]))
    else:
        what = error["msg"][0].lower() + error["msg"][1:]
    got = "" if kind in ("extra_forbidden", "value_error", "missing") else f" (got {error.get('input')!r})"
    return f"{loc or 'config'}: {what}{got}"


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """All errors of `exc` on one line, each naming its dotted key path."""
    return "; ".join(prefix + _describe(e) for e in exc.errors())


def load_config(path: str | Path, overrides: dict | None = None) -> Config:
    """Read and validate a YAML config; relative paths resolve against the file's folder.

    Raises:
        ConfigError: the file is missing, not YAML, or invalid (message names the key path).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; pass the path of a YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (got {type(raw).__name__})")
    for dotted, value in (overrides or {}).items():
        section = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            section = section.setdefault(key, {})
        section[leaf] = value
    try:
        return Config.model_validate(raw, context={"base_dir": path.parent.absolute()})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from None
