"""The training config: a YAML file validated into typed sections.

Only `data.path` is required; everything else has a default chosen to train a good model on
a table nobody has tuned for. Unknown keys are rejected (a typo that is silently ignored
trains a different model than the user thinks), and `--set dotted.key=value` overrides are
applied before validation so they get the same checks.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from anomaly_vae.calibration import Costs, parse_strategy
from anomaly_vae.errors import InputError, first_line


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_default(cls, values: Any) -> Any:
        """A section with every key under it commented out (`training:` alone) is YAML's null:
        it was refused as "Input should be a valid dictionary or instance of TrainingConfig",
        where it means the section's defaults."""
        if not isinstance(values, dict):
            return values
        return {
            key: {} if value is None and _is_section(cls, key) else value
            for key, value in values.items()
        }

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """`true` where a number belongs (`training.epochs: true`) was read as 1: it trained
        one epoch and registered the champion without a word, where `epochs: abc` stops."""
        values = value if isinstance(value, list) else [value]
        flags = [v for v in values if isinstance(v, bool)]
        if flags and _numbers_only(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"a number, not {str(flags[0]).lower()}")
        return value


def _numbers_only(annotation: Any) -> bool:
    """Whether a field holds numbers (one, a list, a choice of numbers, or None), no flag and
    no text: `image.channels: true` read as 1, `model.hidden: [true, 64]` as [1, 64]."""
    if annotation in (int, float):
        return True
    arguments = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in arguments)
    return bool(arguments) and all(_numbers_only(a) for a in arguments)


def _is_section(model: type[BaseModel], key: Any) -> bool:
    """Whether `key` of `model` holds a section (`training`, `training.trainer`)."""
    annotation = model.model_fields[key].annotation if key in model.model_fields else None
    return isinstance(annotation, type) and issubclass(annotation, _Section)


def _as_text(value: Any) -> Any:
    """A number given where a key takes text (a column, folder or model name, a path) is the
    text it was written as: YAML reads `label: 1` or `registered_model: 2024` as a number,
    refused as "Input should be a valid string"; the loader keeps `007` as written."""
    if isinstance(value, list):
        return [_as_text(item) for item in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return getattr(value, "written", str(value))
    return value


def _expand_user(path: str | None) -> str | None:
    """A path with `~` for the home folder, as a shell reads it: `path: ~/data/fraud.parquet`
    was looked for in a folder named `~` in the working directory."""
    return path and os.path.expanduser(path)


class DataConfig(_Section):
    path: str
    kind: Literal["auto", "table", "image"] = Field(
        default="auto",
        description="auto: images for an *-idx3-ubyte(.gz) file or a folder without Parquet "
        "files, else a table.",
    )
    label: str | None = None
    anomaly_value: str | None = Field(
        default=None,
        description="Label value that marks an anomaly; default: any non-zero number or true.",
    )
    id_columns: list[str] = []
    categorical: list[str] | None = Field(
        default=None,
        description="Categorical columns, read from a CSV as text; default: inferred from the "
        "column types (a CSV column of digits is then a number).",
    )
    drop: list[str] = []

    _text = field_validator("path", "label", "id_columns", "categorical", "drop", mode="before")(
        _as_text
    )
    _home = field_validator("path")(_expand_user)

    @field_validator("id_columns", "categorical", "drop")
    @classmethod
    def _no_repeated_names(cls, names: list[str] | None) -> list[str] | None:
        """A name listed twice was reported as the input's fault ("more than one column named
        'txn_id'") although the file held one such column."""
        repeated = sorted({name for name in names or () if names.count(name) > 1})
        if repeated:
            raise ValueError(f"names {', '.join(map(repr, repeated))} more than once")
        return names

    @field_validator("anomaly_value", mode="before")
    @classmethod
    def _label_value_as_text(cls, value: Any) -> Any:
        """`anomaly_value: 2` is a number in YAML; labels are compared with it as numbers or
        as text (`anomaly_vae.data.schema.anomaly_labels`), so it is kept as text."""
        return str(value) if isinstance(value, bool) else _as_text(value)

    @model_validator(mode="after")
    def _dropped_columns_only_dropped(self) -> DataConfig:
        """A label also listed in `drop` trained as the label, the drop silently ignored; an
        id listed there was carried into the scores all the same. (The label may be an id,
        which carries it into scored files.)"""
        # Reversed, so that a name in two roles keeps its first (data.id_columns).
        named = reversed(self._named_columns())
        kept = {name: key for name, key in named if key != "data.drop"}
        if dropped := next((name for name in self.drop if name in kept), None):
            raise ValueError(
                f"'{dropped}' is named in {kept[dropped]} and data.drop: a dropped column is not "
                "read"
            )
        return self

    def role_keys(self) -> dict[str, str]:
        """The columns given a role (id, label, dropped), each with the key that names it."""
        return dict(self._named_columns())

    def _named_columns(self) -> list[tuple[str, str]]:
        return [
            *((name, "data.id_columns") for name in self.id_columns),
            *([(self.label, "data.label")] if self.label else []),
            *((name, "data.drop") for name in self.drop),
        ]


# The likelihoods each kind of model can be built with.
LIKELIHOODS = {"table": ("gaussian", "unit-gaussian"), "image": ("gaussian", "bernoulli", "ssim")}
# The model settings only the tabular network reads.
TABLE_ONLY_MODEL_SETTINGS = frozenset({"hidden", "dropout", "activation"})


class ModelConfig(_Section):
    # [64, 32] scores twice as many rows per second but lost 0.01 mean AP over the benchmark
    # tables (3 seeds: 0.763 vs 0.773), which put AP below the target margin over PyOD's VAE.
    hidden: list[int] = [128, 64]
    conv_channels: list[int] = Field(
        default=[32, 64], description="Image models: channels of each stride-2 conv layer."
    )
    # Unbounded, latent 0 trained and registered a model without a latent space, and a dropout
    # outside [0, 1) ended in torch's traceback; a negative beta rewarded a large KL.
    latent: int = Field(default=8, gt=0)
    # The KL weight in training (scores always add recon and KL in full). 0.5 over 1.0: mean AP
    # 0.769 -> 0.788 and AUROC 0.917 -> 0.919 over the benchmark tables (3 seeds); the image
    # configs keep the 1.0 they were tuned with.
    beta: float = Field(default=0.5, ge=0)
    likelihood: Literal["gaussian", "unit-gaussian", "bernoulli", "ssim"] = Field(
        default="gaussian",
        description="Images only: bernoulli (binary cross-entropy) and ssim (structural "
        "dissimilarity, for textured surfaces).",
    )
    dropout: float = Field(default=0.0, ge=0, lt=1)
    # Tabular hidden layers. leaky-relu over silu: mean AUROC 0.919 -> 0.921 at the same AP
    # (0.795) over the benchmark tables (3 seeds), and scoring up to 1.4x faster on one thread.
    activation: Literal["leaky-relu", "relu", "silu"] = "leaky-relu"

    def check_likelihood(self, kind: Literal["table", "image"]) -> None:
        """Refuse a likelihood the `kind` of model cannot use; the config alone cannot tell
        which kind it builds (`data.path` decides). Built anyway, the model would train as
        something else than the config says: a table model reads ssim as unit-gaussian."""
        if self.likelihood not in LIKELIHOODS[kind]:
            other = "image" if kind == "table" else "table"
            raise InputError(
                f"model.likelihood: {self.likelihood} is for {other}s; {kind}s use "
                + " or ".join(LIKELIHOODS[kind])
            )

    @field_validator("hidden", "conv_channels")
    @classmethod
    def _positive_sizes(cls, sizes: list[int]) -> list[int]:
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError("must be a non-empty list of positive layer sizes")
        return sizes


# What `image.mask_rule` fills in (anomaly_vae.data.images._masks_of).
MASK_FIELDS = ("stem", "name", "parent")


class ImageConfig(_Section):
    """How image files become model inputs and which of them are normal."""

    size: int = Field(default=28, gt=0, description="Images are resized to size x size.")
    channels: Literal[1, 3] = Field(
        default=1, description="1: grayscale; 3: RGB (grayscale files are replicated)."
    )
    normal: list[str] = Field(
        default=["good"],
        description="Folder names whose images are normal, whatever their case; others anomalous.",
    )
    normal_digits: list[int] = Field(
        default=[0], description="IDX files (MNIST): the labels that are normal."
    )
    labels_csv: str | None = Field(
        default=None,
        description="A path,label CSV labelling every image, instead of folder names (1 = anomaly).",
    )
    mask_rule: str = Field(
        default="{stem}.png",
        description="Pixel mask beside each image, relative to its folder ({stem}, {name}, "
        "{parent} are filled in); mask files are never read as images. A mask's pixels "
        "that are not black mark defects (in a JPEG or lossy WebP, those above half the "
        "range; in a mask with transparency, those not transparent).",
    )
    holdout_fraction: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Normal images kept out of training (chosen from the file name and "
        "training.seed), for `evaluate --held-out-only`.",
    )
    augment: bool = Field(default=False, description="Random flips of training images.")
    train_noise: float = Field(
        default=0.0,
        ge=0,
        description="Standard deviation of smooth noise added to training images only, which "
        "the model learns to remove: it then repairs broad defects (uneven brightness) instead "
        "of reconstructing them. 0 trains on the images as they are.",
    )
    noise_cells: int = Field(
        default=4,
        gt=0,
        description="train_noise is drawn on a grid of noise_cells x noise_cells values and "
        "smoothly enlarged to the image: 4 gives patches of about a quarter of a side.",
    )
    complexity_weight: float = Field(
        default=0.5,
        ge=0,
        description="Nats the recon score subtracts per bit of the image's zlib-compressed "
        "pixels (its input complexity); 0 scores the reconstruction alone.",
    )

    _text = field_validator("normal", "labels_csv", mode="before")(_as_text)
    _home = field_validator("labels_csv")(_expand_user)

    @field_validator("mask_rule")
    @classmethod
    def _mask_fields_only(cls, rule: str) -> str:
        """Only plain {stem}, {name} and {parent}: any other placeholder ({file}, {0}), a
        format spec or an unmatched brace failed at the first image, in a KeyError,
        IndexError, ValueError or MemoryError traceback."""
        try:
            fields = [field[1:] for field in string.Formatter().parse(rule) if field[1] is not None]
        except ValueError as exc:
            raise ValueError(f"{exc} (a brace itself is written {{{{ or }}}})") from None
        if any(name not in MASK_FIELDS or spec or conversion for name, spec, conversion in fields):
            raise ValueError("fills in only {stem}, {name} and {parent}, each as it is (no ! or :)")
        return rule


class TrainerConfig(_Section):
    """Passed through to `lightning.Trainer` for multi-device or mixed-precision training."""

    accelerator: str = "cpu"
    # Lightning also takes the ids of the devices to use: `devices: [0, 1]` was refused as
    # "Input should be a valid integer".
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    # Lightning takes 16, 32 and 64 as numbers too: `precision: 16` was refused as "Input
    # should be a valid string".
    precision: int | str = "32-true"


class TrainingConfig(_Section):
    # A cosine decay from 1e-2 over 24 epochs, against the earlier constant 3e-3 for up to 30
    # (the benchmark tables, 3 seeds): mean AUROC 0.927 -> 0.930 at the same AP (0.805), with
    # 30_satellite, undertrained at the constant rate, 0.795 -> 0.807, and less fit time. Peaks
    # of 3e-3, 6e-3 and 1.5e-2 over 30 epochs gave AUROC 0.925, 0.928 and 0.927; 20 epochs
    # 0.930 at AP 0.801. configs/magnetic_tile.yaml keeps the constant rate it was tuned with.
    epochs: int = Field(default=24, gt=0)
    batch_size: int = Field(default=256, gt=0)
    learning_rate: float = Field(default=1e-2, gt=0)
    lr_schedule: Literal["cosine", "constant"] = Field(
        default="cosine",
        description="cosine: decay the learning rate to 1/100 of its peak over the epochs.",
    )
    weight_decay: float = Field(default=0.0, ge=0)
    # Trained on all 90,994 normal rows of the credit-card sample rather than the benchmark's
    # 5,000, the loss spiked in the third epoch (train loss 35 -> 255), early stopping kept the
    # first epoch's weights, and test AUROC fell to 0.871 (0.938 on 5,000 rows). Capping the
    # gradient's norm at 20 trains through: 0.940; on the nine 5,000-row benchmark tables it
    # changes mean AUROC by nothing (0.931) and AP by -0.001 (benchmarks/results/ten-seeds.md).
    gradient_clip: float | None = Field(
        default=20.0, gt=0, description="Cap on the gradient's norm per step; null: no cap."
    )
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    early_stopping_patience: int = Field(default=5, ge=0)
    max_train_rows: int | None = Field(default=None, gt=0)
    seed: int = 0
    trainer: TrainerConfig = TrainerConfig()


class CalibrationConfig(_Section):
    strategy: str = Field(
        default="auto",
        description="f1, recall>=R, precision>=P, fpr<=F, quantile=Q or cost; auto: f1 when "
        "the validation data holds labelled anomalies, else fpr<=0.01.",
    )
    cost_fn: float | None = Field(default=None, gt=0, description="cost: a missed anomaly.")
    cost_fp: float | None = Field(default=None, gt=0, description="cost: a false alarm.")
    probability: Literal["isotonic", "logistic", "none"] = Field(
        default="isotonic",
        description="Calibrated anomaly probability, fitted when validation holds anomalies.",
    )

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, strategy: str) -> str:
        """A misspelt strategy (`fpr<0.01`) stopped `train` only once the model had trained,
        leaving a FAILED run; `calibrate --strategy` checks it before scoring too."""
        if strategy != "auto":
            parse_strategy(strategy)
        return strategy

    @model_validator(mode="after")
    def _costs_go_with_cost(self) -> CalibrationConfig:
        has_costs = self.cost_fn is not None and self.cost_fp is not None
        if (self.strategy == "cost") != has_costs:
            raise ValueError("the cost strategy needs cost_fn and cost_fp, and only it uses them")
        if self.strategy.replace(" ", "") == "estimated-f1":
            raise ValueError(
                "estimated-f1 needs unlabelled new data: use it with `anomaly-vae calibrate`"
            )
        return self

    def costs(self) -> Costs | None:
        """The costs the `cost` strategy weighs; None for the other strategies."""
        return Costs(fn=self.cost_fn, fp=self.cost_fp) if self.strategy == "cost" else None


class ScoringConfig(_Section):
    samples: int = Field(default=0, ge=0, description="0 scores at z = mu; L > 0 averages L draws.")
    top_features: int = Field(default=3, ge=0)


def _model_name(name: str | None) -> str | None:
    """Refuse a registered model name MLflow refuses: it did so only once the model had
    trained, in a traceback that left a FAILED run. MLflow registers a name with '@', but
    reads `models:/a@b/1` as an alias: `train` printed version URIs that found no model."""
    if name and ("/" in name or ":" in name):
        raise ValueError(f"{name!r} is no model name: MLflow's names hold no '/' or ':'")
    if name and "@" in name:
        raise ValueError(f"{name!r} is no model name: '@' starts an alias in models:/ URIs")
    return name


class MlflowConfig(_Section):
    experiment: str | None = None
    registered_model: str | None = None

    _text = field_validator("experiment", "registered_model", mode="before")(_as_text)
    _valid_name = field_validator("registered_model")(_model_name)


class Config(_Section):
    data: DataConfig
    image: ImageConfig = ImageConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    scoring: ScoringConfig = ScoringConfig()
    mlflow: MlflowConfig = MlflowConfig()
    name: str | None = Field(default=None, description="Default experiment and model name.")

    _text = field_validator("name", mode="before")(_as_text)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str | None, info: ValidationInfo) -> str | None:
        """`name` names the registered model unless `mlflow.registered_model` does (declared
        before it, so validated already)."""
        mlflow = info.data.get("mlflow")
        return name if mlflow and mlflow.registered_model else _model_name(name)

    # Where the config came from, for the training run's name and tags; no config keys.
    _file: str | None = PrivateAttr(default=None)
    _overrides: tuple[str, ...] = PrivateAttr(default=())

    @property
    def source_file(self) -> str | None:
        """The YAML file `load_config` read, if the config came from one."""
        return self._file

    @property
    def overrides(self) -> tuple[str, ...]:
        """The `--set key=value` overrides `load_config` applied to the file, in order."""
        return self._overrides

    def settings_for(self, kind: Literal["table", "image"]) -> dict[str, Any]:
        """Every key, defaults included, but those only the other kind of model reads
        (`check_kind`): a table's training runs logged `image.*` and `model.conv_channels`
        params, which `mlflow ui` listed among the ones that made the model."""
        settings = self.model_dump()
        if kind == "table":
            del settings["image"]
            del settings["model"]["conv_channels"]
        else:
            for key in TABLE_ONLY_MODEL_SETTINGS:
                del settings["model"][key]
        return settings

    def check_kind(self, kind: Literal["table", "image"]) -> None:
        """Refuse what the `kind` of model `data.path` decided on cannot use: a likelihood of
        the other kind, or settings only the other kind reads. Ignored, they would let the
        config describe another model than the one trained."""
        self.model.check_likelihood(kind)
        if kind == "image":
            table_only = sorted(TABLE_ONLY_MODEL_SETTINGS & self.model.model_fields_set)
            if table_only:
                raise InputError(
                    f"model.{table_only[0]}: tabular models only; image models use "
                    "model.conv_channels"
                )
            return
        image_only = [f"image.{key}" for key in sorted(self.image.model_fields_set)]
        if "conv_channels" in self.model.model_fields_set:
            image_only.insert(0, "model.conv_channels")
        if image_only:
            raise InputError(
                f"{image_only[0]}: image models only, and {self.data.path} is a table (its "
                "model's layers are model.hidden)"
            )


class _Yaml12Booleans(yaml.SafeLoader):
    """A safe loader whose booleans are YAML 1.2's, true and false alone.

    PyYAML follows YAML 1.1, where yes, no, on and off are booleans too: `anomaly_value: yes`
    (the bank data's label) would reach the config as True and fail as "not a valid string".
    Boolean keys lose nothing: pydantic still reads "yes" or "on" as true there.

    A key twice in one mapping is refused: PyYAML keeps the last, so a second `training:`
    section silently dropped the first one's settings, as an unknown key would be dropped.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` entries may be overridden by the mapping's own keys
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # PyYAML's own check refuses it below
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    problem=f"key {key!r} appears twice, line {key_node.start_mark.line + 1}"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1's integers go too: PyYAML read `anomaly_value: 010` as octal, the label 8, and
# `1:30` (base 60) as 90, `0b11` as 3; YAML 1.2 reads 10, and the text 1:30 and 0b11.
_YAML_1_1_ONLY = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int")
_Yaml12Booleans.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML_1_1_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Booleans.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_Yaml12Booleans.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)


class _WrittenInt(int):
    """An integer that keeps the text it was written as, for a key that takes text (`_as_text`).

    Number keys lose nothing: pydantic makes it a plain int."""

    written: str


class _WrittenFloat(float):
    """A float that keeps the text it was written as (`_WrittenInt`)."""

    written: str


def _yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A YAML 1.2 integer: decimal whatever its leading zeros, or 0o octal, or 0x hex."""
    text = loader.construct_scalar(node)
    number = _WrittenInt(int(text, 0) if text.startswith(("0o", "0x")) else int(text))
    number.written = text
    return number


def _written_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    number = _WrittenFloat(loader.construct_yaml_float(node))
    number.written = loader.construct_scalar(node)
    return number


_Yaml12Booleans.add_constructor("tag:yaml.org,2002:int", _yaml12_int)
_Yaml12Booleans.add_constructor("tag:yaml.org,2002:float", _written_float)


def read_yaml(text: str) -> Any:
    """A config file's or `--set` value's YAML, with YAML 1.2 booleans and integers."""
    return yaml.load(text, Loader=_Yaml12Booleans)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong in the YAML and where. The first line of PyYAML's message is its context,
    "while scanning for the next token" for a tab indent, which names neither the problem
    (a tab) nor its line."""
    if not isinstance(exc, yaml.MarkedYAMLError) or not exc.problem:
        return first_line(exc)
    mark = exc.problem_mark
    return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}" if mark else exc.problem


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `key.sub=value` overrides and validate the result."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text()) or {}
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    # A directory, a file without read permission or one in another encoding than UTF-8 used
    # to end in a traceback.
    except UnicodeDecodeError as exc:
        _refuse_data_as_config(path)
        raise InputError(f"{path}: config file is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        _refuse_data_as_config(path)
        raise InputError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        _refuse_data_as_config(path)
        raise InputError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(raw, dict):
        _refuse_data_as_config(path)
        raise InputError(f"{path}: a config must be a mapping of sections")
    for override in overrides:
        _apply_override(raw, override)
    if "name" not in raw:
        _check_file_name(path, raw)
        raw["name"] = path.stem
    # data.path stays relative to the working directory, as every other path a user types.
    config = parse_config(raw, source=str(path), overrides=overrides)
    config._file, config._overrides = str(path), tuple(overrides)
    return config


def _refuse_data_as_config(path: Path) -> None:
    """Name the mistake behind a config that does not read as one: `anomaly-vae train
    transactions.csv` said "a config must be a mapping of sections", and a Parquet file "not
    UTF-8 text", neither of which says what a config is. An image names its folder: an image
    model reads a folder."""
    from anomaly_vae.data.images import IMAGE_SUFFIXES
    from anomaly_vae.data.tables import CSV_COMPRESSIONS, TABLE_FORMATS

    suffix = path.suffix.lower()
    data = path.parent if suffix in IMAGE_SUFFIXES else path
    if suffix in IMAGE_SUFFIXES or suffix in TABLE_FORMATS or suffix in CSV_COMPRESSIONS:
        raise InputError(
            f"{path}: data, not a config; a config is a YAML file that names it as "
            f"data.path ('data: {{path: {data}}}'), as configs/*.yaml do"
        )


def _check_file_name(path: Path, raw: dict[str, Any]) -> None:
    """Refuse a file name that cannot name the model the config leaves unnamed: the line
    blamed `name`, a key the file does not hold ("'name': ... 'fraud@v2' is no model name")."""
    mlflow = raw.get("mlflow")
    if isinstance(mlflow, dict) and mlflow.get("registered_model"):
        return
    try:
        _model_name(path.stem)
    except ValueError as exc:
        raise InputError(
            f"{path}: the config sets no name, so its file name names the model, and {exc}; "
            "set name (or mlflow.registered_model) in the config, or rename the file"
        ) from None


def parse_config(
    raw: dict[str, Any], source: str = "config", overrides: Sequence[str] = ()
) -> Config:
    """Validate a config mapping, turning pydantic's report into one readable line.

    A key an override set is blamed on the `--set` that set it, not on `source`: the typo in
    `--set training.epoch=3` was reported as the config file's, which does not hold it."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        source = _blamed(source, where, overrides)
        if error["type"] == "extra_forbidden":
            raise InputError(f"{source}: unknown key '{where}'{_did_you_mean(where)}") from None
        if error["type"] == "missing":
            raise InputError(f"{source}: missing required key '{where}'") from None
        # Our own checks' lines as written, without pydantic's "Value error, " before them.
        reason = error["ctx"]["error"] if error["type"] == "value_error" else error["msg"]
        raise InputError(f"{source}: '{where}': {reason}") from None


def _did_you_mean(key: str) -> str:
    """The config key nearest a misspelt one (`training.bach_size`), as a hint."""
    import difflib

    depth = key.count(".")  # a key for a key, a section for a section
    keys = [k for k in _keys(Config) if k.count(".") == depth]
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.8)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a config section, its subsections' included."""
    keys = []
    for name in model.model_fields:
        keys.append(prefix + name)
        if _is_section(model, name):
            keys += _keys(model.model_fields[name].annotation, f"{prefix}{name}.")
    return keys


def _blamed(source: str, where: str, overrides: Sequence[str]) -> str:
    """Who set the key at `where`: the last `--set` of it, else `source`. A check of a whole
    section (`calibration`'s costs go with the cost strategy) names the file and the `--set`
    inside that section: `--set calibration.strategy=cost` was blamed on the file alone."""
    keys = [(override, override.partition("=")[0]) for override in reversed(overrides)]
    for override, key in keys:
        if where == key or where.startswith(key + "."):
            return f"--set {override!r}"
    for override, key in keys:
        if key.startswith(where + "."):
            return f"{source} with --set {override!r}"
    return source


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise InputError(f"--set {override!r}: expected dotted.key=value")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or a section left empty (`training:` alone)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise InputError(f"--set {override!r}: '{part}' is not a section")
    # Unguarded, a value such as `[1` ended the command in a yaml ParserError traceback.
    try:
        node[parts[-1]] = read_yaml(value) if value else None
    except yaml.YAMLError as exc:
        raise InputError(
            f"--set {override!r}: not a valid YAML value ({yaml_problem(exc)})"
        ) from None
