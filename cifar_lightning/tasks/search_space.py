"""An Optuna search space from overrides in Hydra's sweep grammar (the command line's and hparams_search's
`hydra.sweeper.params`), each sweep checked by the Optuna distribution it becomes."""

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import OverrideParseException

from cifar_lightning.blocks.errors import UserError


def search_space(arguments: Sequence[str], params: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Optuna distributions of the sweep overrides in Hydra's grammar (the config's `params`, key -> sweep, then
    the command line's `arguments`), and the other overrides (passed to every job as written). A later override of
    a key replaces an earlier one. choice(a, b) -> categorical; range(a, b[, step]) -> int/float steps over
    Hydra's values (b excluded; a descending range is the same set); interval(a, b) -> uniform float,
    int(interval(a, b)) -> uniform int, tag(log, ...) -> log scale.

    Raises:
        UserError: one line naming the override (hydra.sweeper.params.KEY=... for the config's) and the rule it
            breaks: Optuna's distributions judge what Optuna can search (a log scale from 0, a reversed interval,
            an empty choice or range, ...)."""
    lines = [(f"{k}={v}", "hydra.sweeper.params.") for k, v in (params or {}).items()] + [(a, "") for a in arguments]
    by_key: dict[str, tuple[Override, str]] = {}
    for line, origin in lines:
        try:
            (override,) = OverridesParser.create().parse_overrides([line])
        except OverrideParseException as e:
            why = [part for part in str(e).splitlines()[1:] if part.strip() and not part.startswith("See ")]
            raise UserError(f"{origin}{line}: {' '.join(why) or e}") from None
        by_key.pop(override.get_key_element(), None)
        by_key[override.get_key_element()] = (override, origin)
    space: dict[str, Any] = {}
    fixed: list[str] = []
    for key, (override, origin) in by_key.items():
        assert override.input_line is not None  # parsed from a line
        if not override.is_sweep_override():
            fixed.append(override.input_line)
            continue
        try:
            space[key] = distribution(override)
        except ValueError as e:  # Optuna's constructors name the rule that is broken
            rule = str(e).replace("`", "").rstrip(".")
            raise UserError(f"{origin}{override.input_line} is not a search space Optuna takes: {rule}") from None
    return space, fixed


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (see search_space). ValueError if Optuna refuses it."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if isinstance(value, RangeSweep) and value.step == 0:  # Hydra would refuse to count its values in a traceback
        raise ValueError("its step must not be 0")
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices: list[Any] = list(override.sweep_iterator(transformer=Transformer.encode))
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError("the range has no values (its end must lie beyond its start in the step's direction)")
        # the ends counted in decimals: Hydra's float steps add up rounding errors (range(0, 1, 0.3) ends at
        # 0.8999999999999999), for which Optuna would drop the last step
        start, step = Decimal(str(value.start)), Decimal(str(value.step or 1))
        first, last = sorted((start, start + (len(values) - 1) * step))
        if all(isinstance(v, int) for v in values):
            return IntDistribution(int(first), int(last), step=int(abs(step)))
        return FloatDistribution(float(first), float(last), step=float(abs(step)))
    if isinstance(value, IntervalSweep):
        low, high, log_scale = value.start, value.end, "log" in value.tags
        assert low is not None and high is not None  # Hydra's grammar has no open interval
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    raise ValueError("the Optuna sweeper searches choice(), range() and interval() sweeps")
