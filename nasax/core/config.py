"""The typed run config: YAML files validated by pydantic, with dotted CLI overrides.

A config has one section per concern (`data`, `model`, `search`, `optim`, `run`).
The core checks the sections it owns. What the layers above own it keeps raw: a
strategy's knobs (`search.<strategy name>`) and a space defined as a mapping
(`model.space`); the search layer (`nasax.search.options.resolve_config`) and the supernet
(`nasax.supernet.skeletons.resolve_model`) check those, so a strategy or a space is added
without touching this file, and reading a config loads neither JAX nor any strategy.
"""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from nasax.core.errors import ConfigError


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class AugmentConfig(Section):
    """Augmentation of training images, run in JAX inside the jitted step."""

    crop_padding: int = Field(0, ge=0, description="random crop after zero padding (pixels)")
    flip: bool = Field(False, description="random horizontal flip")


class DataConfig(Section):
    """The data set: where it comes from and how training images are augmented."""

    name: str = Field(
        "digits", description="digits | npz:PATH | tfds:NAME | text:PATH | text-words:DIR"
    )
    data_dir: str | None = Field(None, description="TFDS data directory")
    num_classes: int | None = Field(None, ge=2, description="check labels against this")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class ModelConfig(Section):
    """The search space and the size of the networks built on it."""

    space: str | dict[str, Any] = Field(
        "darts",
        description="a registered space, or a mapping that defines one from it (base, ops, "
        "nodes, inputs_per_node; checked by the supernet)",
    )
    channels: int = Field(16, ge=2, description="C of the first cell (even)")
    layers: int = Field(8, ge=1, description="number of cells (nb201: cells per stage)")
    stem_multiplier: int = Field(3, ge=1, description="stem channels / C (nb201: 1)")

    @model_validator(mode="after")
    def _even_channels(self) -> ModelConfig:
        if self.channels % 2:
            raise ValueError(
                f"model.channels must be even (factorized reduce), got {self.channels}"
            )
        return self


class DiscretizerConfig(Section):
    """How the derived cell is read from the architecture weights."""

    max_skip_connect: int | None = Field(
        None, ge=0, description="cap on skip_connect edges in the normal cell (P-DARTS)"
    )


class DeployConfig(Section):
    """The network a budget is priced at (null: the space's published network at the
    data's image size, DARTS C36 L20 and NAS-Bench-201 C16 N5)."""

    channels: int | None = Field(None, ge=2, description="C of the deployed network")
    layers: int | None = Field(None, ge=1, description="its depth (nb201: cells per stage)")
    image_size: int | None = Field(None, ge=1, description="its input's side in pixels")


class CostConfig(Section):
    """A budget every strategy respects: the found cell's cost at the deployed size stays
    at or under `target`; `form` and `weight` shape the relaxed strategies' cost term."""

    metric: Literal["params", "flops", "latency"] = Field(
        description="params (count), flops (per image) or latency (ms on the profiled device)"
    )
    target: float = Field(gt=0, description="the budget, in the metric's unit")
    form: Literal["hinge", "linear", "log"] = Field(
        "hinge",
        description="hinge: weight * max(0, cost/target - 1); linear: weight * cost/target "
        "(ProxylessNAS); log: loss * weight * log(1 + cost/unit)^exponent (FBNet)",
    )
    weight: float = Field(
        0.0,
        ge=0,
        description="the relaxed strategies' cost term's weight (FBNet's alpha for log); 0: "
        "the discretizer's hard limit alone, which found better cells on the NB201 proxy",
    )
    exponent: float = Field(0.6, gt=0, description="log form: FBNet's beta")
    reward_exponent: float = Field(
        -0.07, le=0, description="ENAS: reward = acc * (cost/target)^this (MnasNet's w)"
    )
    batch_size: int = Field(1, ge=1, description="latency: the batch it is measured at")
    table: str | None = Field(
        None, description="latency: a table from `nasax profile` (null: time on this machine)"
    )
    deploy: DeployConfig = Field(default_factory=DeployConfig)


class SearchConfig(Section):
    """The architecture search; the strategy's own knobs live in `search.<strategy>`."""

    strategy: str = Field("darts", description="the search strategy: a registered name")
    epochs: int = Field(
        50, ge=0, description="0 only for strategies that start from trained weights"
    )
    batch_size: int = Field(64, ge=1, description="images per step, over all devices")
    train_portion: float = Field(
        0.5, gt=0.0, lt=1.0, description="share of the training set for the weight step"
    )
    eval_every: int = Field(1, ge=0, description="epochs between test evaluations (0: end only)")
    discretizer: DiscretizerConfig = Field(
        default_factory=DiscretizerConfig, description="how the derived cell is read"
    )
    cost: CostConfig | None = Field(None, description="a budget on the found cell (null: none)")
    strategy_sections: dict[str, dict[str, Any]] = Field(default_factory=dict, exclude=True)
    """Every `search.<name>` mapping, raw; the search layer checks that the one present is
    the strategy's and fills in its defaults (`nasax.search.options.resolve_config`)."""

    @model_validator(mode="before")
    @classmethod
    def _keep_strategy_sections(cls, data: Any) -> Any:
        """Moves each mapping under a key that is not one of the core's into
        `strategy_sections`; an unknown scalar stays, and is refused as an unknown key."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        own = cls.model_fields.keys() - {"strategy_sections"}
        sections = {}
        for key in [k for k in data if k not in own]:
            if isinstance(data[key], dict) or data[key] is None:
                sections[str(key)] = dict(data.pop(key) or {})
        data["strategy_sections"] = sections
        return data

    @property
    def options(self) -> dict[str, Any]:
        """The strategy's own section as written (resolved: with its defaults)."""
        return self.strategy_sections.get(self.strategy, {})


class TrainConfig(Section):
    """Retraining a genotype from scratch (`nasax train`); every regulariser is a switch."""

    genotype: str | None = Field(
        None, description="genotype.json path or a published name (DARTS_V2); --genotype sets it"
    )
    epochs: int = Field(600, ge=1, description="retraining epochs")
    batch_size: int = Field(96, ge=1, description="images per step, over all devices")
    eval_every: int = Field(1, ge=0, description="epochs between test evaluations (0: end only)")
    drop_path: float = Field(
        0.2, ge=0, lt=1, description="final drop-path rate, ramped linearly from 0 (0: off)"
    )
    auxiliary: bool = Field(True, description="auxiliary head after the 2/3 reduction cell")
    auxiliary_weight: float = Field(0.4, ge=0, description="weight of the auxiliary loss")
    cutout: int = Field(16, ge=0, description="side of the cutout square in pixels (0: off)")


class WeightOptimConfig(Section):
    """SGD with momentum on the network weights, cosine-annealed per epoch."""

    lr: float = Field(0.025, gt=0, description="learning rate of the first epoch")
    lr_min: float = Field(0.001, ge=0, description="cosine: learning rate of the last epoch")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(3e-4, ge=0, description="L2 weight decay")
    grad_clip: float | None = Field(5.0, gt=0, description="global-norm clip (null: none)")
    schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="cosine from lr to lr_min over the epochs, or constant lr"
    )
    nesterov: bool = Field(False, description="Nesterov momentum (PyTorch's formulation)")


class ArchOptimConfig(Section):
    """Adam on the architecture parameters, with L2 weight decay as in DARTS."""

    lr: float = Field(3e-4, gt=0, description="Adam learning rate")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam's beta1 and beta2")
    weight_decay: float = Field(1e-3, ge=0, description="L2 weight decay")
    budget_steps: int | None = Field(
        None,
        ge=1,
        description="search steps `lr` was tuned for (the protocol's epochs x steps per "
        "epoch); a shorter search raises lr by budget_steps / its steps, never lowers it",
    )

    @model_validator(mode="after")
    def _betas_in_range(self) -> ArchOptimConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.arch.betas must lie in [0, 1), got {list(self.betas)}")
        return self


class OptimConfig(Section):
    """The optimizers: SGD on the network weights, Adam on the architecture parameters."""

    weights: WeightOptimConfig = Field(default_factory=WeightOptimConfig)
    arch: ArchOptimConfig = Field(default_factory=ArchOptimConfig)


class RunConfig(Section):
    """How a run executes and what it writes; none of it changes what is computed."""

    out_dir: str = Field("runs", description="parent of run directories")
    log_every: int = Field(10, ge=1, description="steps between metric lines")
    checkpoint_keep: int = Field(2, ge=1, description="checkpoints kept")
    checkpoint_minutes: float | None = Field(
        30.0, gt=0, description="also checkpoint mid-epoch this often (null: epoch ends only)"
    )
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="on a NaN/inf loss or gradient: stop the run, or skip the step"
    )
    progress: bool = Field(True, description="progress bars (--quiet turns them off)")
    tensorboard: bool = Field(True, description="TensorBoard event files in RUN_DIR/tensorboard")
    plots: bool = Field(True, description="architecture-weight pictures in RUN_DIR/arch")
    time_limit: float | None = Field(
        None,
        gt=0,
        description="seconds a run may take, compilation included; it then stops with its "
        "latest state (null: no limit)",
    )
    execution: Literal["auto", "blocks", "fused"] = Field(
        "auto",
        description="blocks: compile each distinct block once and run the step block by "
        "block; fused: one XLA program per step; auto: blocks on CPU, fused elsewhere",
    )
    remat: Literal["auto", "none", "convs", "full"] = Field(
        "auto",
        description="what each block keeps for the backward pass: everything (none), its "
        "convolutions' outputs (convs) or only its inputs (full), trading memory for "
        "compute; auto: convs in block execution, none in fused",
    )
    plan_cache: bool = Field(
        True,
        description="block execution: keep the traced step's plan and programs beside the "
        "compilation cache, so a rerun or resume skips tracing (off: registered code that "
        "reads state from outside its source file)",
    )
    devices: int | None = Field(
        None, ge=1, description="data-parallel devices (null: all of them); batches split evenly"
    )
    distributed: bool = Field(
        False, description="join a multi-host job (jax.distributed.initialize) before running"
    )
    coordinator_address: str | None = Field(
        None, description="host:port of process 0 (else JAX_COORDINATOR_ADDRESS or autodetect)"
    )
    num_processes: int | None = Field(None, ge=1, description="else JAX_NUM_PROCESSES")
    process_id: int | None = Field(None, ge=0, description="else JAX_PROCESS_ID")


class DropoutConfig(Section):
    """A language model's dropout rates (the DARTS reference's names in brackets); the
    defaults are its search's, and retraining uses words 0.1."""

    output: float = Field(0.75, ge=0, lt=1, description="(dropout) locked, on the cell's outputs")
    hidden: float = Field(0.25, ge=0, lt=1, description="(dropouth) on every state a node reads")
    cell_input: float = Field(0.75, ge=0, lt=1, description="(dropoutx) on the cell's input")
    embedding: float = Field(0.2, ge=0, lt=1, description="(dropouti) locked, on the embeddings")
    words: float = Field(0.0, ge=0, lt=1, description="(dropoute) whole words of the embedding")


class TextConfig(Section):
    """Language models of a recurrent space (`model.space: darts_rnn`), on `text:` and
    `text-words:` data; image runs ignore it."""

    embed_size: int = Field(300, ge=1, description="embedding size (850 in the papers' retraining)")
    hidden_size: int = Field(
        300, ge=1, description="hidden state size (equal to embed_size when tied)"
    )
    tie_weights: bool = Field(True, description="decode with the embedding matrix")
    batch_norm: bool = Field(
        True, description="search: normalise the cell's states (the reference)"
    )
    dropout: DropoutConfig = Field(default_factory=DropoutConfig)
    bptt: int = Field(35, ge=2, description="mean tokens per truncated-BPTT window")
    variable_length: bool = Field(
        True, description="training windows of random length around bptt (AWD-LSTM); off: all bptt"
    )
    eval_batch_size: int = Field(10, ge=1, description="rows of the validation and test batches")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="text:PATH: the validation share")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="text:PATH: the test share (0: none)")
    activation_reg: float = Field(0.0, ge=0, description="AR: weight of the mean squared output")
    temporal_reg: float = Field(
        1e-3, ge=0, description="TAR: weight of the mean squared change of the cell's outputs"
    )
    nonmono: int = Field(
        5,
        ge=1,
        description="retraining: switch SGD to averaged SGD when validation loss has "
        "not improved on the best of all but the last `nonmono` evaluations (NT-ASGD)",
    )


class TuneParam(Section):
    """One knob of a tuning search space: a float or int range, or a list of choices."""

    type: Literal["float", "int", "choice"] = Field(description="a range or a list of choices")
    low: float | None = Field(None, description="float and int: the lower end")
    high: float | None = Field(None, description="float and int: the upper end")
    log: bool = Field(False, description="sample the range on a log scale")
    step: float | None = Field(None, gt=0, description="grid step of the range")
    choices: list[Any] | None = Field(None, description="choice: the values to pick from")

    @model_validator(mode="after")
    def _complete(self) -> TuneParam:
        if self.type == "choice":
            if not self.choices:
                raise ValueError("a 'choice' knob needs a non-empty `choices` list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type!r} knob needs low < high, got {self.low}, {self.high}")
        elif self.log and self.low <= 0:
            raise ValueError(f"a log-scale knob needs low > 0, got {self.low}")
        return self


class TuneConfig(Section):
    """`nasax tune`: knobs of the run tuned by optuna's TPE with median pruning."""

    command: Literal["search", "train"] = Field("search", description="what each trial runs")
    trials: int = Field(20, ge=1, description="trials in the study (finished ones count)")
    metric: str = Field(
        "val_acc", description="epoch figure to optimise: val_acc (search), test_acc, ..."
    )
    direction: Literal["maximize", "minimize"] = Field(
        "maximize", description="whether a larger metric is better"
    )
    pruner: Literal["median", "none"] = Field(
        "median", description="stop trials whose epoch figure lags the median of the others"
    )
    startup_trials: int = Field(3, ge=0, description="trials that are never pruned")
    warmup_epochs: int = Field(1, ge=0, description="epochs of a trial that are never pruned")
    retries: int = Field(
        1, ge=0, description="reruns (same values) of a trial whose worker died mid-trial"
    )
    heartbeat_seconds: int = Field(
        30, ge=1, description="with --storage: how often a worker marks its trial alive"
    )
    grace_seconds: int = Field(
        120, ge=2, description="with --storage: a trial not marked alive this long is failed"
    )
    params: dict[str, TuneParam] = Field(
        default_factory=dict, description="dotted config key -> its range or choices"
    )

    @model_validator(mode="after")
    def _beats_within_grace(self) -> TuneConfig:
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"tune.grace_seconds ({self.grace_seconds}) must exceed tune.heartbeat_seconds "
                f"({self.heartbeat_seconds}), or a live worker's trial would be failed"
            )
        return self


class Config(Section):
    """A whole run."""

    name: str = Field("nasax", description="the run's name (default: the config file's)")
    seed: int = Field(0, description="seeds the weights, the data order and every sample")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    tune: TuneConfig | None = Field(None, description="how `nasax tune` tunes this config")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data, strategy sections in their place (all defaults
        filled in once the layers above resolved it)."""
        data = self.model_dump(mode="json")
        data["search"].update(self.search.strategy_sections)
        if data["tune"] is None:
            del data["tune"]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _field_path(loc: tuple[Any, ...], prefix: str = "") -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    path = ".".join(parts)
    return ".".join(p for p in (prefix, path) if p)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a section at `loc` accepts (for 'unknown key' messages)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return section_keys(model)


def section_keys(model: type[BaseModel]) -> list[str]:
    """The keys a config section accepts by name (a strategy's section aside)."""
    return [k for k in model.model_fields if k != "strategy_sections"]


def unknown_key(
    path: str, allowed: list[str], candidates: list[str] | None = None, also: str = ""
) -> str:
    """One line for the unknown dotted key `path`: the closest of `candidates` (default:
    `allowed`), then what is allowed here, and `also`."""
    key = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, allowed if candidates is None else candidates, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    known = f"; allowed here: {', '.join(allowed)}{also}" if allowed else ""
    return f"unknown key {path!r}{hint}{known}"


def first_error(
    err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> str:
    """One line for the first error: the key, the bad value, what is allowed."""
    e = err.errors()[0]
    path = _field_path(e["loc"], prefix)
    if e["type"] == "extra_forbidden":
        return unknown_key(path, _allowed_keys(model, e["loc"]) if model else [])
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error":  # our validators name the key themselves
        return msg
    value = e.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict) else ""
    return f"{path}: {msg}{shown}" if path else f"{msg}{shown}"


def validate_config(data: Any, source: str = "config") -> Config:
    """Validates plain data as a Config; errors become one-line ConfigErrors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {first_error(e, model=Config)}") from None


def shipped_configs() -> list[str]:
    """Names of the configs shipped with nasax."""
    folder = resources.files("nasax.configs")
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def read_config_file(name_or_path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """Reads a config by path or shipped name; returns (data, where it came from)."""
    path = Path(name_or_path)
    # A folder named like a shipped config (a run directory, say) is not a config file.
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        text, source = path.read_text(), str(path)
    else:
        name = str(name_or_path)
        shipped = resources.files("nasax.configs") / f"{name}.yaml"
        if not shipped.is_file():
            close = difflib.get_close_matches(name, shipped_configs(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"no config file or shipped config named {name!r}{hint}; shipped: "
                f"{', '.join(shipped_configs())}"
            )
        text, source = shipped.read_text(), f"{name}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    return data or {}, source


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `key.sub=value` overrides; values are parsed as YAML (`2`, `null`, `[1, 2]`)."""
    data = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {item!r}: {'.'.join(parts[: depth + 1])} is a value, not a section"
                )
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def read_config(
    name_or_path: str | os.PathLike, overrides: list[str] | None = None
) -> tuple[dict[str, Any], str]:
    """A config's data (path or shipped name) with `overrides` applied and its name
    defaulting to the file's, and where it came from."""
    data, source = read_config_file(name_or_path)
    data = apply_overrides(data, overrides or [])
    data.setdefault("name", Path(source).stem)
    return data, source


def load_config(name_or_path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Reads, overrides and validates a config's core sections (path or shipped name);
    `nasax.load_config` also checks what the layers above own."""
    return validate_config(*read_config(name_or_path, overrides))
