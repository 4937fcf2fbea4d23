"""Experiment configs: YAML files checked strictly against a schema.

A config has the sections `task` and `model` (each `{kind: ..., arguments}` checked against the
signature of the builder it names), `train` and `eval` (the dataclasses below), plus `experiment`,
`method` and `seed`. An unknown key or a value of the wrong type fails at once with a message that
names the key and says what is allowed.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    """YAML as users write it: `1e-3` is a float (YAML 1.1 reads it as a string without a dot),
    and a key given twice in one mapping is an error instead of silently taking the last value."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"the key {key!r} appears twice in one section (line "
                                  f"{key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str):
    """Parse YAML text with the project's rules (see _Loader)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}") from None


@dataclass
class Train:
    iterations: int = 70000
    meta_batch: int = 25
    inner_steps: int = 1             # 0 = plain training on all tasks (the pretrained baseline)
    inner_lr: float = 0.01
    learn_inner_lr: bool = False     # meta-learn one step size per parameter entry (paper §2.2)
    first_order: bool = False
    meta_lr: float = 0.001
    grad_clip: typing.Optional[float] = None   # clip each meta-gradient entry to [-c, c]
    checkpoint_every: int = 1000
    log_every: int = 100
    val_every: int = 0               # 0: no meta-validation during training
    val_tasks: int = 0
    val_seed: int = 99
    xla: bool = True
    distribute: str = "default"      # default | mirrored | multi_worker


@dataclass
class Eval:
    tasks: int = 600
    seed: int = 12345
    steps: int = 10                  # inner steps at test time (all of 0..steps are reported)
    report_step: typing.Optional[int] = None   # the step whose metric is the headline number
    inner_lr: typing.Optional[float] = None    # None: the training step size
    batch: int = 50                  # test tasks adapted at once
    task: dict = field(default_factory=dict)   # overrides of the task section at test time

    @property
    def headline_step(self) -> int:
        """The step whose metric is reported (and picks the checkpoint): report_step, else steps."""
        return self.steps if self.report_step is None else self.report_step


@dataclass
class Config:
    experiment: str
    task: dict
    model: dict
    train: Train
    eval: Eval
    method: str = "maml"
    seed: int = 0
    notes: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _type_ok(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if tp is typing.Any or tp is inspect.Parameter.empty:
        return True
    if origin is typing.Union:
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value) \
            if args else isinstance(value, (list, tuple))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _check_keys(where: str, given: dict, allowed: dict[str, object]) -> None:
    if not isinstance(given, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(given).__name__}")
    for key, value in given.items():
        if key not in allowed:
            raise ConfigError(f"unknown key '{where}.{key}'; allowed keys: {', '.join(sorted(allowed))}")
        if not _type_ok(value, allowed[key]):
            raise ConfigError(f"'{where}.{key}' must be of type {getattr(allowed[key], '__name__', allowed[key])}, "
                              f"got {value!r} ({type(value).__name__})")


def _dataclass(cls, where: str, given: dict):
    hints = typing.get_type_hints(cls)
    _check_keys(where, given, hints)
    return cls(**given)


def check_call(builders: dict, where: str, spec: dict) -> None:
    """Check a `{kind: ..., **kwargs}` section against the signature of builders[kind]."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ConfigError(f"{where} needs a 'kind' (one of {', '.join(sorted(builders))})")
    if spec["kind"] not in builders:
        raise ConfigError(f"unknown {where}.kind {spec['kind']!r}; allowed: {', '.join(sorted(builders))}")
    fn = builders[spec["kind"]]
    hints = typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    sig = inspect.signature(fn)
    allowed = {name: hints.get(name, typing.Any) for name in sig.parameters if name not in ("self", "split")}
    allowed["kind"] = str
    _check_keys(where, spec, allowed)
    missing = [n for n, p in sig.parameters.items()
               if p.default is inspect.Parameter.empty and n not in spec and n not in ("self", "split")]
    if missing:
        raise ConfigError(f"{where} ({spec['kind']}) is missing {', '.join(missing)}")


KINDS = ("supervised", "rl")


def from_dict(raw: dict) -> Config:
    """A config from its YAML mapping. Its top-level `kind` says which schema it follows:
    `supervised` (Config: task, model, train, eval) or `rl` (RLConfig: env, model, train, eval).
    Every config under reproduce/configs names it; a run directory's saved config.yaml does not
    (the kind is not part of the run's identity), and there an `env` key means `rl`."""
    from maml_tf import context, nets, tasks  # noqa: F401  (the builders the config names)
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a mapping")
    kind = raw.get("kind", "rl" if "env" in raw else "supervised")  # implied in run directories' config.yaml
    if kind not in KINDS:
        raise ConfigError(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    raw = {k: v for k, v in raw.items() if k != "kind"}
    if kind == "rl":  # see RLConfig below
        return rl_from_dict(raw)
    top = {f.name: f.type for f in dataclasses.fields(Config)}
    unknown = set(raw) - set(top)
    if unknown:
        raise ConfigError(f"unknown key '{sorted(unknown)[0]}'; allowed top-level keys: {', '.join(sorted(top))}")
    for key in ("experiment", "task", "model"):
        if key not in raw:
            raise ConfigError(f"the config needs '{key}'")
    for key, tp in (("experiment", str), ("method", str), ("seed", int), ("notes", str)):
        if key in raw and not _type_ok(raw[key], tp):
            raise ConfigError(f"'{key}' must be of type {tp.__name__}, got {raw[key]!r}")
    check_call(tasks.BUILDERS, "task", raw["task"])
    check_call(nets.BUILDERS, "model", raw["model"])
    ev = _dataclass(Eval, "eval", raw.get("eval", {}) or {})
    check_call(tasks.BUILDERS, "eval.task", {**raw["task"], **ev.task})
    tr = _dataclass(Train, "train", raw.get("train", {}) or {})
    _require_iterations(raw)
    cfg = Config(experiment=raw["experiment"], task=raw["task"], model=raw["model"], train=tr, eval=ev,
                 method=raw.get("method", "maml"), seed=raw.get("seed", 0), notes=raw.get("notes", ""))
    _check_values(cfg)
    return cfg


def _require_iterations(raw: dict) -> None:
    if not isinstance(raw.get("train"), dict) or "iterations" not in raw["train"]:
        raise ConfigError("the config needs 'train.iterations' (the training budget; the paper's is "
                          "in the experiment's config under reproduce/configs)")


def _at_least(where: str, value, low, allowed_none: bool = False, strict: bool = False) -> None:
    if value is None and allowed_none:
        return
    if value < low or (strict and value == low):
        raise ConfigError(f"'{where}' must be {'>' if strict else '>='} {low}, got {value!r}")


def _check_values(cfg) -> None:
    """Values that have the right type but cannot work, refused before anything is written."""
    t, e = cfg.train, cfg.eval
    for key in ("iterations", "val_every", "inner_steps"):
        _at_least(f"train.{key}", getattr(t, key), 0)
    for key in ("meta_batch", "checkpoint_every", "log_every"):
        _at_least(f"train.{key}", getattr(t, key), 1)
    _at_least("train.meta_lr", t.meta_lr, 0, strict=True)
    _at_least("train.inner_lr", t.inner_lr, 0)
    _at_least("train.grad_clip", t.grad_clip, 0, allowed_none=True, strict=True)
    _at_least("eval.tasks", e.tasks, 1)
    _at_least("eval.steps", e.steps, 0)
    _at_least("eval.batch", e.batch, 1)
    if e.report_step is not None and not 0 <= e.report_step <= e.steps:
        raise ConfigError(f"'eval.report_step' must lie in 0..eval.steps ({e.steps}), got {e.report_step}")
    if e.inner_lr is not None:
        _at_least("eval.inner_lr", e.inner_lr, 0)
    if t.val_every > 0 and t.val_tasks < 1:
        raise ConfigError(f"'train.val_every' is {t.val_every} but 'train.val_tasks' is {t.val_tasks}: set "
                          f"val_tasks (e.g. 300), or val_every: 0 for no meta-validation")
    if t.distribute not in ("default", "mirrored", "multi_worker"):
        raise ConfigError(f"'train.distribute' must be default, mirrored or multi_worker, got {t.distribute!r}")
    way = cfg.task.get("way")
    n_out = cfg.model.get("n_out") if "n_out" in cfg.model else (cfg.model.get("sizes") or [None])[-1]
    if way is not None and n_out is not None and way != n_out:
        raise ConfigError(f"the task is {way}-way but the model has {n_out} outputs: set the model's "
                          f"{'n_out' if 'n_out' in cfg.model else 'last size'} to {way}")


def load(path: str | Path, overrides: dict | None = None) -> Config:
    """Load a YAML config; `overrides` maps dotted keys ('train.iterations') to values."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no config file at {path}")
    raw = yaml_load(path.read_text()) or {}
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return from_dict(raw)


def parse_override(text: str) -> tuple[str, object]:
    """'train.iterations=500' -> ('train.iterations', 500), the value read as YAML."""
    if "=" not in text:
        raise ConfigError(f"an override looks like section.key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml_load(value)


# ----------------------------------------------------------------------------- RL configs

RL_METHODS = ("maml", "pretrained", "random", "oracle", "context")  # context: MAML with a context vector


@dataclass
class RLTrain:
    """Meta-training of a policy (paper §5.3; the official MAML-TRPO settings as defaults)."""
    iterations: int = 500
    meta_batch: int = 40             # tasks per meta-iteration
    trajectories: int = 20           # rollouts per task and per adaptation step
    horizon: int = 200
    inner_steps: int = 1             # 0 = TRPO on the pre-update samples (pretrained / oracle)
    inner_lr: float = 0.1
    first_order: bool = False
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15
    fd_base_eps: float = 1.0         # finite-difference HVP eps = fd_base_eps / (||theta|| + 1e-8)
    discount: float = 0.99
    gae_lambda: float = 1.0
    checkpoint_every: int = 5
    log_every: int = 1
    xla: bool = False
    task_chunk: int = 10             # tasks at a time in the loss and KL gradients (memory; 0 = all at once)


@dataclass
class RLEval:
    tasks: int = 40
    seed: int = 12345                # test tasks and test rollouts
    steps: int = 3                   # adaptation steps at test time (all of 0..steps are reported)
    trajectories: typing.Optional[int] = None  # None: the training number
    inner_lr: typing.Optional[float] = None    # None: the training step (or the tuned one)
    lr_grid: typing.List[float] = field(default_factory=list)  # tuned on training tasks if not empty
    tune_tasks: int = 20
    tune_seed: int = 99              # the tasks the step size is tuned on (never the test seed)
    checkpoint: str = "best"         # best | latest


@dataclass
class RLConfig:
    experiment: str
    env: str                         # a registered Gymnasium id (maml_tf.envs)
    model: dict
    train: RLTrain
    eval: RLEval
    method: str = "maml"             # maml | pretrained | random | oracle | context (App. C)
    seed: int = 0
    env_kwargs: dict = field(default_factory=dict)
    notes: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def rl_from_dict(raw: dict) -> RLConfig:
    """An RL config: `env` (a registered id), `model` (a policy builder of maml_tf.nets, without
    obs_dim / act_dim, which come from the environment), `train` (RLTrain), `eval` (RLEval)."""
    from maml_tf import context, nets  # noqa: F401  (the builders the config names)
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a mapping")
    top = {f.name: f.type for f in dataclasses.fields(RLConfig)}
    unknown = set(raw) - set(top)
    if unknown:
        raise ConfigError(f"unknown key '{sorted(unknown)[0]}'; allowed top-level keys of an RL config: "
                          f"{', '.join(sorted(top))}")
    for key in ("experiment", "env", "model"):
        if key not in raw:
            raise ConfigError(f"the config needs '{key}'")
    for key, tp in (("experiment", str), ("env", str), ("method", str), ("seed", int), ("notes", str),
                    ("env_kwargs", dict)):
        if key in raw and not _type_ok(raw[key], tp):
            raise ConfigError(f"'{key}' must be of type {tp.__name__}, got {raw[key]!r}")
    method = raw.get("method", "maml")
    if method not in RL_METHODS:
        raise ConfigError(f"'method' must be one of {', '.join(RL_METHODS)}, got {method!r}")
    import maml_tf.envs  # noqa: F401  (registers the ids)
    import gymnasium as gym
    if raw["env"] not in gym.registry:
        raise ConfigError(f"'env' {raw['env']!r} is not a registered Gymnasium id")
    model = raw["model"]
    if isinstance(model, dict) and model.get("kind") in nets.BUILDERS:
        for dim in ("obs_dim", "act_dim"):
            if dim in model:
                raise ConfigError(f"model.{dim} comes from the environment; remove it from the config")
    check_call(nets.BUILDERS, "model", {**model, "obs_dim": 1, "act_dim": 1}
               if isinstance(model, dict) else model)
    ev = _dataclass(RLEval, "eval", raw.get("eval", {}) or {})
    if ev.checkpoint not in ("best", "latest"):
        raise ConfigError(f"'eval.checkpoint' must be best or latest, got {ev.checkpoint!r}")
    tr = _dataclass(RLTrain, "train", raw.get("train", {}) or {})
    _require_iterations(raw)
    cfg = RLConfig(experiment=raw["experiment"], env=raw["env"], model=model, train=tr, eval=ev,
                    method=method, seed=raw.get("seed", 0), env_kwargs=raw.get("env_kwargs", {}) or {},
                    notes=raw.get("notes", ""))
    t = cfg.train
    for key in ("iterations", "inner_steps", "cg_iters", "max_backtracks"):
        _at_least(f"train.{key}", getattr(t, key), 0)
    for key in ("meta_batch", "trajectories", "horizon", "checkpoint_every", "log_every"):
        _at_least(f"train.{key}", getattr(t, key), 1)
    for key in ("max_kl", "fd_base_eps"):
        _at_least(f"train.{key}", getattr(t, key), 0, strict=True)
    _at_least("train.inner_lr", t.inner_lr, 0)
    _at_least("eval.tasks", ev.tasks, 1)
    _at_least("eval.steps", ev.steps, 0)
    return cfg
