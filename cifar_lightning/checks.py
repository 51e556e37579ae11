"""Keyword arguments checked against the signature of the callable they are meant for, before it is called.

Used for the values a user gives on the command line (refused before any data loads) and for what a
checkpoint or a run folder holds (refused before anything is built from it): every keyword must be one the
callable accepts, and every value of the kind its annotation (or, without one, its default) says.
"""

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from cifar_lightning.errors import UserError

SCALARS = (bool, int, float, str, type(None))


def check_arguments(target: Callable, kwargs: dict, where: str) -> None:
    """Raises UserError naming `where.key` for a keyword `target` does not take or a value of the wrong kind.
    Keywords that `target` only takes through **kwargs are left to the caller."""
    parameters = inspect.signature(target).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # annotations that do not evaluate (some of torch's): fall back to the defaults
        hints = {}
    for key, value in kwargs.items():
        parameter = parameters.get(key)
        if parameter is None or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            if not takes_any:
                accepted = ", ".join(
                    k for k, p in parameters.items() if p.kind == p.POSITIONAL_OR_KEYWORD or p.kind == p.KEYWORD_ONLY
                )
                raise UserError(f"{where}.{key}: {_name(target)} takes no argument {key!r} (it takes {accepted})")
            continue
        expected = hints.get(key, _kind_of_default(parameter.default))
        if not fits(value, expected):
            raise UserError(f"{where}.{key}={value!r} is not {_describe(expected)}, as {_name(target)} expects")


def check_option(
    name: str, value: Any, expected: Any, least: float | None = None, choices: Sequence | None = None
) -> None:
    """One value of a task's own config (evaluate.yaml, predict.yaml, export.yaml): its kind, and its least value or
    the values it may take."""
    if fits(value, expected) and (least is None or value >= least) and (choices is None or value in choices):
        return
    if choices:
        raise UserError(
            f"{name}={value!r} must be one of {', '.join('null' if c is None else repr(c) for c in choices)}"
        )
    raise UserError(
        f"{name}={value!r} must be {_describe(expected)}" + (f" of at least {least}" if least is not None else "")
    )


TTA = (bool | int | None, None, (None, 0, 1, 2))  # null: the checkpoint's own level; true is 1, false 0


def fits(value: Any, expected: Any) -> bool:
    """Whether a plain value (from YAML, a command line or a checkpoint) is of the kind `expected` describes."""
    if isinstance(value, str) and "${" in value:  # an interpolation would be resolved, and so run, when built
        return False
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if expected is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if origin in (tuple, list, Sequence) or expected in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
        return all(fits(v, args[0] if args else typing.Any) for v in value)
    if origin is typing.Literal:
        return value in args
    if inspect.isclass(expected):  # a tensor, a module, ...: nothing a config or checkpoint should hold
        return False
    # Any, or an unannotated argument without a default: plain scalars and lists of them
    return isinstance(value, SCALARS) or (isinstance(value, (list, tuple)) and all(fits(v, typing.Any) for v in value))


def _kind_of_default(default: Any):
    if default is inspect.Parameter.empty or default is None:
        return typing.Any
    if isinstance(default, (list, tuple)):
        return list
    return type(default) if isinstance(default, SCALARS) else typing.Any


def _describe(expected: Any) -> str:
    if expected is typing.Any:
        return "a plain value (a number, a string, true/false, null or a list of them)"
    names = {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        list: "a list",
        tuple: "a list",
        type(None): "null",
    }
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(expected))
    if typing.get_origin(expected) in (tuple, list, Sequence):
        items = {int: "whole numbers", float: "numbers", str: "strings", bool: "true/false values"}
        args = [a for a in typing.get_args(expected) if a is not Ellipsis]
        return f"a list of {items.get(args[0], 'plain values')}" if len(set(args)) == 1 else "a list"
    if typing.get_origin(expected) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(expected)))
    return names.get(expected, f"of type {getattr(expected, '__name__', None) or str(expected).replace('typing.', '')}")


def _name(target: Callable) -> str:
    return f"{target.__module__}.{target.__qualname__}"
