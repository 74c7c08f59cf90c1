"""The one schema of a search YAML: every default and range, validated with pydantic."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fundus_search.data_io import SOURCES, Augmentation, DataSpec, SyntheticSpec
from fundus_search.models import NORMALIZATIONS, WEIGHT_SOURCES, InitSpec, TrainSettings, is_backbone
from fundus_search.models.weights import backbone_options
from fundus_search.results.answer import Planned
from fundus_search.results.layout import SearchFacts
from fundus_search.strategy import TRANSFER_STRATEGIES
from fundus_search.vocabulary import (
    AVERAGE,
    FT,
    INTEGER_PARAMS,
    LP,
    LP_FT,
    NORM_FT,
    PARTIAL_FT,
    STRATEGIES,
    TRAIN_LOSS,
    VAL_METRICS,
    UserError,
    check_name,
    val,
)

Strategy = Literal[STRATEGIES]  # type: ignore[valid-type]
Normalization = Literal[tuple(NORMALIZATIONS)]  # type: ignore[valid-type]


class ConfigError(UserError):
    """A config file cannot be read or is invalid; the message names the key path."""


class _Strict(BaseModel):
    # allow_inf_nan=False: every number is finite (a `cpus_per_trial: .inf` would wait for ever)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    """Relative paths in a YAML file are relative to the file's folder, not the cwd."""
    if path is None:
        return None
    base = Path((info.context or {}).get("base_dir", "."))
    return Path(os.path.abspath(base / Path(path).expanduser()))


class SyntheticConfig(_Strict):
    """Defaults: data_io.SyntheticSpec; the ranges live here."""

    n: int = Field(SyntheticSpec.n, ge=10, description="number of images")
    size: int = Field(SyntheticSpec.size, ge=32, le=2048, description="image side, px")
    seed: int = SyntheticSpec.seed
    difficulty: float = Field(SyntheticSpec.difficulty, ge=0.0, le=1.0, description="0 separable .. 1 overlapping")
    positive_fraction: float = Field(SyntheticSpec.positive_fraction, gt=0.0, lt=1.0)

    def to_spec(self) -> SyntheticSpec:
        return SyntheticSpec(**self.model_dump())


class DataConfig(_Strict):
    source: Literal[tuple(SOURCES)] = "synthetic"  # type: ignore[valid-type]
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
    test_fraction: float = Field(0.0, ge=0.0, le=0.5, description="held out of the search and every fold")
    skip_bad: bool = False
    cache_dir: Path | None = None

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> DataConfig:
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
            source=self.source,
            root=self.root,
            task=self.task,
            csv=self.csv,
            classes=tuple(self.classes),
            synthetic=self.synthetic.to_spec(),
            image_size=self.image_size,
            crop_foreground=self.crop_foreground,
            skip_bad=self.skip_bad,
            cache_dir=self.cache_dir,
        )


def _architecture(name: str) -> str:
    if not is_backbone(name):
        raise ValueError(
            f"unknown architecture {name!r}; use resnet18, resnet34, resnet50 (torchvision) or a timm "
            "architecture name (timm.list_models(), e.g. vit_large_patch16_224)"
        )
    return name


Architecture = Annotated[str, AfterValidator(_architecture)]


class InitConfig(_Strict):
    source: Literal[tuple(WEIGHT_SOURCES)]  # type: ignore[valid-type]
    arch: Architecture | None = None  # default: model.backbone
    weights: str | None = None  # torchvision weights enum member, e.g. IMAGENET1K_V1
    path: Path | None = None
    projection: bool = False  # flair only: 512-d projected features
    normalize: Normalization | None = None  # default: the source's (torchvision, retfound, dinov2, timm: imagenet)
    image_size: int | None = Field(None, ge=16, le=4096)  # S of this init's input; default: data.image_size
    pool: Literal["avg", "token"] | None = None  # timm backbones: mean of patch tokens or class token

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> InitConfig:
        if self.source == "torchvision" and not (self.weights or self.path):
            raise ValueError("torchvision source needs weights (e.g. IMAGENET1K_V1) or path")
        if self.source == "flair" and self.path is None:
            raise ValueError("flair source needs path (flair_resnet.pth, model.safetensors or their folder)")
        if self.source in ("retfound", "dinov2", "timm") and self.path is None:
            raise ValueError(f"{self.source} source needs path (its weight file; this tool never downloads)")
        if self.projection and self.source != "flair":
            raise ValueError("projection applies to the flair source only")
        if self.pool and self.source in ("torchvision", "flair"):
            raise ValueError("pool applies to timm architectures (torchvision's ResNets always average)")
        object.__setattr__(self, "path", _resolve(self.path, info))
        return self


class ModelConfig(_Strict):
    backbone: Architecture = "resnet50"  # every init's architecture unless it names its own `arch`
    inits: dict[str, InitConfig] = {"random": InitConfig(source="random")}

    @field_validator("inits")
    @classmethod
    def _names(cls, value):
        """An init's name names folders (TensorBoard runs) and labels figures: an identifier only."""
        for name in value:
            check_name(name)
        if not value:
            raise ValueError("needs at least one init, e.g. random: {source: random}")
        return value

    def arch(self, name: str) -> str:
        """The architecture of init `name`: its own `arch`, else model.backbone."""
        return self.inits[name].arch or self.backbone

    def backbone_options(self, name: str) -> dict:
        """The timm arguments init `name`'s architecture is built with (its pooling)."""
        return backbone_options(self.init_spec(name))

    def init_spec(self, name: str) -> InitSpec:
        """The init's weight source; normalisation is the source's unless the config sets it."""
        init = self.inits[name]
        return InitSpec(
            source=init.source,
            weights=init.weights,
            path=init.path,
            projection=init.projection,
            normalize=init.normalize,
            pool=init.pool,
        )


class AugmentationConfig(_Strict):
    """Defaults: data_io.Augmentation; the ranges live here."""

    flip: float = Field(Augmentation.flip, ge=0, le=1)
    rotation_deg: float = Field(Augmentation.rotation_deg, ge=0, le=180)
    scale: float = Field(Augmentation.scale, ge=0, lt=1)
    brightness: float = Field(Augmentation.brightness, ge=0, lt=1)
    contrast: float = Field(Augmentation.contrast, ge=0, lt=1)


class TrainingConfig(_Strict):
    """Fixed (not searched) training knobs. Defaults: models.TrainSettings; the ranges live here."""

    lp_solver: Literal["adamw", "lbfgs"] = TrainSettings.lp_solver
    lp_c: float = Field(TrainSettings.lp_c, gt=0)
    head_lr_mult: float = Field(TrainSettings.head_lr_mult, gt=0)
    grad_clip: float = Field(TrainSettings.grad_clip, gt=0)
    eval_batch_size: int = Field(TrainSettings.eval_batch_size, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    augmentation: AugmentationConfig = AugmentationConfig()

    def augmentation_spec(self) -> Augmentation:
        return Augmentation(**self.augmentation.model_dump())


class FloatChoices(_Strict):
    """`{choices: [1.0e-5, 1.0e-4]}`: search exactly these values (a grid), not a range."""

    choices: list[float] = Field(min_length=1)


class IntChoices(_Strict):
    choices: list[int] = Field(min_length=1)


FloatRange = float | tuple[float, float] | FloatChoices
IntRange = int | tuple[int, int] | IntChoices


def _check_range(value, name: str, minimum: float, strict: bool):
    if isinstance(value, (FloatChoices, IntChoices)):
        lo, hi = min(value.choices), max(value.choices)
    else:
        lo, hi = (value, value) if isinstance(value, (int, float)) else value
    bad = lo <= minimum if strict else lo < minimum
    if bad:
        raise ValueError(f"lower bound must be {'>' if strict else '>='} {minimum} (got {lo})")
    if hi < lo:
        raise ValueError(f"upper bound {hi} is below lower bound {lo}")
    return value


class SpaceConfig(_Strict):
    """A scalar fixes a parameter; [low, high] searches it (log-uniform for rates);
    {choices: [...]} searches those values only; for init, strategy and batch_size a list chooses."""

    init: list[str] | None = None  # default: every entry of model.inits
    strategy: list[Strategy] = [LP, FT, LP_FT]  # the seed paper's three; also partial_ft, norm_ft
    lp_lr: FloatRange = (1e-4, 1e-1)
    ft_lr: FloatRange = (1e-6, 1e-3)
    lp_epochs: IntRange = (1, 20)
    ft_blocks: IntRange = (1, 4)  # partial_ft: the last blocks (ResNet stages, ViT blocks) it trains
    layer_decay: FloatRange = 1.0  # each block nearer the input learns at this factor of the next one's rate
    weight_decay: FloatRange = (1e-4, 1e-1)
    batch_size: list[int] = [16]

    @field_validator("init", "strategy", "batch_size", mode="before")
    @classmethod
    def _scalar_is_one_choice(cls, value):
        return [value] if isinstance(value, (str, int)) else value

    @field_validator("init", "strategy")
    @classmethod
    def _not_empty(cls, value):
        if value is not None and not value:
            raise ValueError("needs at least one choice (an empty list searches nothing)")
        return value

    @field_validator("lp_lr", "ft_lr", "weight_decay", "lp_epochs", "ft_blocks", "layer_decay", mode="before")
    @classmethod
    def _one_of_three_shapes(cls, value, info):
        """One clear message instead of one per member of the union."""
        integer = info.field_name in INTEGER_PARAMS
        number = (int,) if integer else (int, float)
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (*number, list, tuple, dict)):
            raise ValueError(f"expected {kind}, [low, high] or {{choices: [...]}} (got {value!r})")
        if isinstance(value, (list, tuple)) and (len(value) != 2 or not all(isinstance(v, number) for v in value)):
            raise ValueError(
                f"[low, high] needs two {'integers' if integer else 'numbers'} (got {list(value)}); "
                f"for a set of values write {{choices: {list(value)}}}"
            )
        if isinstance(value, dict):
            choices = value.get("choices")
            if (
                set(value) != {"choices"}
                or not isinstance(choices, list)
                or not choices
                or not all(isinstance(v, number) and not isinstance(v, bool) for v in choices)
            ):
                raise ValueError(
                    f"{{choices: [...]}} needs a non-empty list of {'integers' if integer else 'numbers'}"
                    f" and no other key (got {value})"
                )
        return value

    @field_validator("lp_lr", "ft_lr", "weight_decay")
    @classmethod
    def _positive(cls, value):
        return _check_range(value, "", 0.0, strict=True)

    @field_validator("lp_epochs", "ft_blocks")
    @classmethod
    def _epochs(cls, value):
        return _check_range(value, "", 1, strict=False)

    @field_validator("layer_decay")
    @classmethod
    def _decay(cls, value):
        value = _check_range(value, "", 0.0, strict=True)
        if isinstance(value, (FloatChoices, IntChoices)):
            highest = max(value.choices)
        else:
            highest = value if isinstance(value, (int, float)) else value[1]
        if highest > 1:
            raise ValueError(f"a layer decay is at most 1 (1: one rate for every depth; got {value})")
        return value

    @field_validator("batch_size")
    @classmethod
    def _batches(cls, value):
        if not value or min(value) < 2:
            raise ValueError(f"needs at least one choice, each >= 2 (got {value})")
        return value


class SchedulerConfig(_Strict):
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(3, ge=1)  # main-phase epochs before the first rung
    reduction_factor: float = Field(3, ge=2)
    stratify_by: list[Literal["init", "strategy"]] = ["init", "strategy"]

    def rungs(self, max_epochs: int) -> tuple[int, ...]:
        """The epochs at which ASHA compares a trial with its cell (grace_period x
        reduction_factor^k below max_epochs, as Ray's AsyncHyperBandScheduler places them), then
        max_epochs; () for FIFO, which stops nothing."""
        if self.type != "asha":
            return ()
        rungs, rung = [], min(self.grace_period, max_epochs)
        while rung < max_epochs:
            rungs.append(int(rung))
            rung *= self.reduction_factor
        return (*rungs, max_epochs)


class SearchConfig(_Strict):
    num_samples: int = Field(60, ge=1, le=10_000)
    metric: str = val(AVERAGE)
    mode: Literal["max", "min"] = "max"
    seed: int = 0
    sampler: Literal["tpe", "random"] = "tpe"  # random: the baseline TPE is measured against (B3)
    space: SpaceConfig = SpaceConfig()
    max_epochs: int = Field(30, ge=1)
    scheduler: SchedulerConfig = SchedulerConfig()
    cover_cells: bool = True  # first try every init x strategy cell once, then let TPE choose


class ResourcesConfig(_Strict):
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: dict[Strategy, float] = {LP: 0.25, FT: 1, LP_FT: 1, PARTIAL_FT: 1, NORM_FT: 1}
    max_concurrent_trials: int | None = Field(None, ge=1)

    @field_validator("gpus_per_trial")
    @classmethod
    def _gpus(cls, value):
        bad = {k: v for k, v in value.items() if v < 0}
        if bad:
            raise ValueError(f"GPU shares must be >= 0 (got {bad})")
        return value


class StorageConfig(_Strict):
    path: str = "./runs"  # local folder, shared mount, or s3://bucket/prefix
    max_failures: int = Field(2, ge=0)
    # Epochs between trial checkpoints; a retried or resumed trial continues, exactly, from the
    # last one and redoes the epochs since. A ResNet-50 + AdamW checkpoint is ~300 MB, so every
    # epoch costs most on fast GPU epochs (README "Checkpoints").
    checkpoint_every: int = Field(1, ge=1)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else None
        if scheme is not None and scheme != "s3":
            raise ValueError(
                f"{scheme}:// storage is not supported (got {value!r}); use s3://bucket/prefix, or a folder "
                "(a shared mount on a cluster)"
            )
        return value


class EvaluationConfig(_Strict):
    """How `evaluate` answers the study's question (its --repeats and --seeds override these).

    Defaults are the ones benchmark B9 measured calibrated (benchmarks/README.md).
    """

    repeats: int = Field(2, ge=1, le=20)  # partitions of the repeated k-fold; repeat 0 is the search's
    seeds: int = Field(1, ge=1, le=20)  # per fold, averaged within the fold before any test
    # The primary family: comparisons `STRATEGY: INIT_A - INIT_B` or `INIT: STRATEGY_A - STRATEGY_B`,
    # Holm-adjusted. Default: every pair of pretrained inits under each strategy.
    primary: list[str] | None = None
    rope: float = Field(0.01, ge=0.0, lt=1.0)  # region of practical equivalence, in units of the average

    @field_validator("primary")
    @classmethod
    def _primary(cls, value):
        if value is not None:
            if not value:
                raise ValueError("name at least one comparison, or leave the key out for the default")
            for text in value:
                Planned.parse(text)
        return value


class Config(_Strict):
    """A whole search file."""

    name: str = "search"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig()
    storage: StorageConfig = StorageConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, value):
        return check_name(value)

    def facts(self) -> SearchFacts:
        """What the search fixes when it starts, for search.json: the report and the tables
        read these, never this config."""
        s, data = self.search, self.data
        dataset = {
            "cgi-hrdc": f"CGI-HRDC task {data.task}",
            "synthetic": "synthetic fundus images (demo)",
        }.get(data.source, f"images listed in {data.csv.name if data.csv else 'a CSV'}")
        return SearchFacts(
            metric=s.metric,
            mode=s.mode,
            max_epochs=s.max_epochs,
            rungs=s.scheduler.rungs(s.max_epochs),
            params={k: TRANSFER_STRATEGIES[k].params(self.training.lp_solver) for k in s.space.strategy},
            dataset=dataset,
        )

    @model_validator(mode="after")
    def _cross_check(self, info: ValidationInfo) -> Config:
        unknown = [n for n in self.search.space.init or [] if n not in self.model.inits]
        if unknown:
            raise ValueError(f"search.space.init: {unknown} not in model.inits ({', '.join(self.model.inits)})")
        if self.search.metric not in _REPORTED_METRICS:
            raise ValueError(f"search.metric: unknown {self.search.metric!r}; use one of {sorted(_REPORTED_METRICS)}")
        for text in self.evaluation.primary or []:
            plan = Planned.parse(text)
            inits, strategies = set(self.inits), set(self.search.space.strategy)
            if not (
                (plan.within in strategies and {plan.a, plan.b} <= inits and plan.a != plan.b)
                or (plan.within in inits and {plan.a, plan.b} <= strategies and plan.a != plan.b)
            ):
                raise ValueError(
                    f"evaluation.primary: {text!r} compares no two searched cells; write "
                    f"'STRATEGY: INIT_A - INIT_B' (strategies {sorted(strategies)}, inits "
                    f"{sorted(inits)}) or 'INIT: STRATEGY_A - STRATEGY_B'"
                )
        if not self.storage.path.startswith("s3://"):
            base = Path((info.context or {}).get("base_dir", "."))
            object.__setattr__(self.storage, "path", os.path.abspath(base / Path(self.storage.path).expanduser()))
        return self

    @property
    def inits(self) -> list[str]:
        return self.search.space.init or list(self.model.inits)

    def image_size(self, init: str) -> int:
        """The input size of init `init`: its own `image_size`, else data.image_size."""
        return self.model.inits[init].image_size or self.data.image_size

    def image_sizes(self) -> list[int]:
        """The input sizes of the searched inits: one image cache each."""
        return sorted({self.image_size(init) for init in self.inits})

    def data_spec(self, image_size: int | None = None) -> DataSpec:
        """The data at one input size (default data.image_size)."""
        spec = self.data.to_spec()
        return spec if image_size is None else dataclasses.replace(spec, image_size=image_size)


_REPORTED_METRICS = set(VAL_METRICS) | {TRAIN_LOSS}


def _describe(error: dict) -> str:
    """One pydantic error as `key.path: what is wrong (got value)`."""
    loc = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
    ctx = error.get("ctx") or {}
    kind = error["type"]
    bounds = {
        "greater_than_equal": ">= {ge}",
        "greater_than": "> {gt}",
        "less_than_equal": "<= {le}",
        "less_than": "< {lt}",
    }
    if kind in bounds:
        what = "must be " + bounds[kind].format(**ctx)
    elif kind == "extra_forbidden":
        what = "unknown key; remove it or fix its spelling"
    elif kind == "value_error":
        what = str(ctx.get("error", error["msg"]))
    else:
        what = error["msg"][0].lower() + error["msg"][1:]
    got = "" if kind in ("extra_forbidden", "value_error", "missing") else f" (got {error.get('input')!r})"
    return f"{loc}: {what}{got}" if loc else what + got


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """All errors of `exc` on one line, each naming its dotted key path."""
    return "; ".join(prefix + _describe(e) for e in exc.errors())


_TOO_DEEP = "nested too deeply to be a config; a config is a few levels of sections"


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: `*name` repeats a node by reference, and a few lines
    of them ("billion laughs") expand to more values than validation can walk in a day."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*name) are not accepted in a config (line {mark.line + 1}); write the value out"
            )
        return super().compose_node(parent, index)


def parse_yaml_value(text: str) -> object:
    """One value written as YAML (`64`, `[1e-5, 1e-3]`, `lbfgs`), by the config's own loader.

    Raises:
        ConfigError: not YAML, or an alias.
    """
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: plain data only, aliases refused
    except yaml.YAMLError as exc:
        raise ConfigError(f"not a YAML value ({' '.join(str(exc).split())})") from None


def read_yaml(path: Path) -> object:
    """The YAML document at `path`, read as UTF-8, without aliases.

    Raises:
        ConfigError: not UTF-8, not YAML, an alias, or nested too deep to read.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: plain data only, aliases refused
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: {_TOO_DEEP}") from None


def read_config(path: Path, overrides: dict | list | None = None) -> dict:
    """The config file's sections as written, with `overrides` set (unvalidated: see load_config)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; pass the path of a YAML file")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (got {type(raw).__name__})")
    for dotted, value in dict(overrides or {}).items():
        section = raw
        *parents, leaf = dotted.split(".")
        for depth, key in enumerate(parents):
            section = section.setdefault(key, {})
            if not isinstance(section, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(f"--set {dotted}: {where} is a value ({section!r}), not a section")
        section[leaf] = value
    return raw


def load_config(path: str | Path, overrides: dict | list | None = None) -> Config:
    """Read and validate a YAML config; relative paths resolve against the file's folder.

    Args:
        overrides: `{"data.image_size": 64}` (or pairs): values set before validation (`--set`).

    Raises:
        ConfigError: the file is missing, not YAML, or invalid (message names the key path).
    """
    path = Path(path)
    raw = read_config(path, overrides)
    try:
        return Config.model_validate(raw, context={"base_dir": path.parent.absolute()})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: {_TOO_DEEP}") from None
