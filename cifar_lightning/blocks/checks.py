"""The one checker: values against the signature of what they will build, before anything is built.

A constructor declares what it accepts in its annotations: the type, `Literal` choices, and ranges as
`annotated_types` constraints (`Annotated[int, Ge(1)]`), which pydantic validates. A plain string in `Annotated`
is the phrase an error uses instead of the generated one (`Annotated[float, Gt(0), "must be a positive number"]`).
`check_arguments` holds a mapping of keyword arguments against such a signature; `check_target` does so for a
config that names its `_target_` (any importable object on the command line; what comes from disk passes
`trust.py` first).
Every refusal is a `UserError` whose one-line message names the key (`data.batch_size=0 must be at least 1`).
"""

import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import annotated_types as at
from hydra.utils import get_object
from pydantic import ConfigDict, TypeAdapter, ValidationError
from typing_extensions import TypeAliasType

from cifar_lightning.blocks.errors import UserError

SCALARS = (bool, int, float, str, type(None))
# what an argument without annotation or default takes: plain scalars and (nested) lists of them
PLAIN = TypeAliasType("PLAIN", "bool | int | float | str | None | list[PLAIN]")
# Keys a config of these groups holds beside its target's keywords: read by the module, not passed on
SCHEDULER_KEYS = {"interval": Annotated[typing.Literal["epoch", "step"], "must be epoch or step"]}
# torch's optimizers accept lr=0 (a run that learns nothing); every optimizer this project builds needs lr > 0
OPTIMIZER_KEYS = {"lr": Annotated[float, at.Gt(0), "must be a positive number"]}
# pydantic's errors of a value of the right kind outside its range (annotated_types constraints)
RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number", "too_short"}
RANGE_ERRORS |= {"too_long", "multiple_of", "predicate_failed"}
UNIONS = (typing.Union, types.UnionType)
ACCUMULATE = Annotated[int, at.Ge(1), "must be a whole number of at least 1"]


def check_arguments(target: Callable, kwargs: dict, where: str) -> None:
    """Raises UserError naming `where.key` for a keyword `target` does not take, or a value its annotation (or,
    without one, its default) does not admit. Keywords that `target` only takes through **kwargs are left alone.

    Args:
        target: a class (its __init__ is read) or a function.
        kwargs: plain values (from YAML, a command line or a checkpoint).
        where: the config path of `kwargs`, e.g. "data" or "callbacks.early_stopping".
    """
    parameters = inspect.signature(target).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    hints = type_hints(target)
    for key, value in kwargs.items():
        parameter = parameters.get(key)
        if parameter is None or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            if not takes_any:
                accepted = ", ".join(
                    k for k, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                )
                raise UserError(f"{where}.{key}: {name_of(target)} takes no argument {key!r} (it takes {accepted})")
            continue
        check_value(f"{where}.{key}" if where else key, value, hints.get(key, _kind_of_default(parameter.default)))


def check_value(name: str, value: Any, expected: Any) -> None:
    """Raises UserError `name=value is not <kind>` or `name=value must be <range>` unless `value` fits."""
    base, constraints, phrase = _unpack(expected)
    problems = _problems(value, expected)
    if not problems:
        return
    if phrase:
        raise UserError(f"{name}={value!r} {phrase}")
    if constraints and problems <= RANGE_ERRORS:
        raise UserError(f"{name}={value!r} must be {' and '.join(map(_describe_constraint, constraints))}")
    raise UserError(f"{name}={value!r} is not {describe(base)}")


def check_target(
    config: Any, where: str, resolve: Callable[[Any, str], Any] | None = None, group: str | None = None
) -> Any:
    """A config with a `_target_` (a net, an augmentation, an optimizer or a schedule, a callback, a logger, the
    trainer): its target resolved (by `resolve(target, where)`, else any importable object, as Hydra would) and
    its keywords checked against its signature. Returns the target. A Compose augmentation's keywords are
    configs themselves, each checked in turn; a scheduler's `interval` and a scheduler's or optimizer's null
    `total_steps` are read by the module (ImageClassifier.optimizer_and_schedule), an optimizer's `lr` must be
    positive. `group` (default: the first part of `where`) chooses those rules."""
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise UserError(f"{where} is not a config (a mapping with a _target_)")
    target = (resolve or _importable)(config.get("_target_"), where)
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    group = group or where.split(".")[0]
    extra = {"scheduler": SCHEDULER_KEYS, "optimizer": OPTIMIZER_KEYS}.get(group, {})
    for key, expected in extra.items():
        if key in kwargs:
            check_value(f"{where}.{key}", kwargs[key], expected)
    if group == "scheduler":
        kwargs.pop("interval", None)
        if "total_steps" in kwargs and kwargs["total_steps"] is None:
            del kwargs["total_steps"]  # null: the run's number of optimizer steps
    if getattr(target, "takes_configs", False):  # Compose: each keyword is an augmentation's config
        for name, part in kwargs.items():
            if part is not None:
                check_target(part, f"{where}.{name}", resolve, group)
        return target
    check_arguments(target, kwargs, where)
    return target


def _importable(target: Any, where: str) -> Any:
    if not isinstance(target, str) or not target:
        raise UserError(f"{where}._target_={target!r} must name a class or function, e.g. torch.optim.SGD")
    try:
        return get_object(target)
    except Exception as e:
        raise UserError(f"{where}._target_={target!r} cannot be imported ({type(e).__name__})") from None


# ------------------------------------------------------------------------------------------- kinds
def fits(value: Any, expected: Any) -> bool:
    """Whether a plain value (from YAML, a command line or a checkpoint) is of the kind `expected` describes,
    constraints included."""
    return not _problems(value, expected)


def _problems(value: Any, expected: Any) -> set[str]:
    """pydantic's error types for `value` as `expected`, empty when it fits: strict validation of its JSON form
    (a list where a tuple is expected and an int where a float is, never a bool or a string for a number, nor
    inf or nan where a range is declared; a class no config value is, such as a tensor, takes nothing). An error
    inside a list is "nested". Before pydantic: no mapping at any depth (a nested config is checked by
    check_target, never passed as a value: Hydra would build its _target_) and no interpolation, which would be
    resolved, and so run, when built."""
    refused = _not_plain(value)
    if refused:
        return {refused}
    try:
        adapter = _adapter(PLAIN if expected is typing.Any else expected, finite=_ranged(expected))
    except Exception:  # an annotation pydantic cannot read (a user's own class): no config value fits it
        return {"unsupported"}
    try:
        adapter.validate_json(json.dumps(value), strict=True)
    except ValidationError as e:
        return {error["type"] if not error["loc"] else "nested" for error in e.errors()}
    except (TypeError, ValueError):  # not JSON: a tensor, an object
        return {"not_json"}
    return {"literal_error"} if _inexact_literal(value, expected) else set()


def _ranged(expected: Any) -> bool:
    """Whether `expected` declares a range anywhere in it: then inf and nan are outside it."""
    if _unpack(expected)[1]:
        return True
    return any(_ranged(arg) for arg in typing.get_args(expected) if arg is not Ellipsis)


def _not_plain(value: Any) -> str | None:
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, str) and "${" in value:
        return "interpolation"
    if isinstance(value, (list, tuple)):
        return next((problem for problem in map(_not_plain, value) if problem), None)
    return None


def _adapter(expected: Any, finite: bool) -> TypeAdapter:
    try:
        return _cached_adapter(expected, finite)
    except TypeError:  # unhashable metadata in the annotation: built each time
        return _cached_adapter.__wrapped__(expected, finite)


@functools.cache
def _cached_adapter(expected: Any, finite: bool) -> TypeAdapter:
    return TypeAdapter(expected, config=ConfigDict(allow_inf_nan=not finite, arbitrary_types_allowed=True))


def _inexact_literal(value: Any, expected: Any) -> bool:
    """Whether `value` fits a Literal of `expected` (or of one of its union's members) only by equality, as pydantic
    matches them (True == 1 == 1.0), and nothing else in `expected`."""
    base = _unpack(expected)[0]
    arms = [_unpack(a)[0] for a in (typing.get_args(base) if typing.get_origin(base) in UNIONS else (base,))]
    members = [m for arm in arms if typing.get_origin(arm) is typing.Literal for m in typing.get_args(arm)]
    if not members or any(value == m and type(value) is type(m) for m in members):
        return False
    return not any(fits(value, arm) for arm in arms if typing.get_origin(arm) is not typing.Literal)


def describe(expected: Any) -> str:
    """The kind `expected` stands for, in words: "a whole number", "one of 'mean', 'sum'", ..."""
    expected, constraints, _ = _unpack(expected)
    if constraints:
        return f"{describe(expected)} {' and '.join(map(_describe_constraint, constraints))}"
    if expected is typing.Any:
        return "a plain value (a number, a string, true/false, null or a list of them)"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "null"}
    origin = typing.get_origin(expected)
    if origin in UNIONS:
        return " or ".join(describe(arg) for arg in typing.get_args(expected))
    if origin in (tuple, list, Sequence) or expected in (tuple, list):
        items = {int: "whole numbers", float: "numbers", str: "strings", bool: "true/false values"}
        fixed = origin is tuple and Ellipsis not in typing.get_args(expected)
        args = [a for a in typing.get_args(expected) if a is not Ellipsis]
        count = f"{len(args)} " if fixed and len(args) > 1 else ""
        return f"a list of {count}{items.get(_unpack(args[0])[0], 'plain values')}" if len(set(args)) == 1 else "a list"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(expected)))
    return names.get(expected, f"of type {getattr(expected, '__name__', None) or str(expected).replace('typing.', '')}")


def type_hints(target: Callable) -> dict[str, Any]:
    """The annotations of `target`'s parameters (of __init__ for a class), Annotated metadata kept; {} when they
    do not evaluate (some of torch's), so that checks fall back to the defaults' kinds."""
    try:
        return typing.get_type_hints(target.__init__ if inspect.isclass(target) else target, include_extras=True)
    except Exception:
        return {}


def name_of(target: Callable) -> str:
    return f"{target.__module__}.{target.__qualname__}"


def _unpack(expected: Any) -> tuple[Any, list, str | None]:
    """Annotated[T, *metadata] -> (T, its constraints, its phrase or None); anything else -> (it, [], None)."""
    if typing.get_origin(expected) is not Annotated:
        return expected, [], None
    base, *metadata = typing.get_args(expected)
    phrases = [m for m in metadata if isinstance(m, str)]
    return base, [m for m in metadata if not isinstance(m, str)], phrases[0] if phrases else None


def _parts(interval: at.Interval) -> list:
    bounds = (("gt", at.Gt), ("ge", at.Ge), ("lt", at.Lt), ("le", at.Le))
    return [kind(getattr(interval, key)) for key, kind in bounds if getattr(interval, key) is not None]


def _describe_constraint(constraint: Any) -> str:
    if isinstance(constraint, at.Interval):
        return " and ".join(map(_describe_constraint, _parts(constraint)))
    words = {at.Gt: ("above", "gt"), at.Ge: ("at least", "ge"), at.Lt: ("below", "lt"), at.Le: ("at most", "le")}
    for kind, (word, key) in words.items():
        if isinstance(constraint, kind):
            return f"{word} {getattr(constraint, key)}"
    if isinstance(constraint, at.MinLen):
        return f"at least {constraint.min_length} long"
    if isinstance(constraint, at.MaxLen):
        return f"at most {constraint.max_length} long"
    return repr(constraint)


def _kind_of_default(default: Any) -> Any:
    if default is inspect.Parameter.empty or default is None:
        return typing.Any
    if isinstance(default, (list, tuple)):
        return list
    return type(default) if isinstance(default, SCALARS) else typing.Any
