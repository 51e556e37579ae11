"""The gate for the overrides a run or a sweep recorded (.hydra/overrides.yaml, multirun.yaml), read from disk and
so possibly crafted: checked as Hydra parses them, before Hydra composes anything from them (what composition
itself does, it does before any check of the composed config in trust.run_config)."""

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob

from cifar_lightning.blocks.errors import UserError

# A resolver call, ${name:...}: named in the refusal of an interpolation
RESOLVER_CALL = re.compile(r"\$\{\s*[\w.\-]+\s*:")
GROUP_OPTION = re.compile(r"[\w\-]+")  # a config file's name in its group's folder: no path


def check_recorded_overrides(overrides: Sequence[str], record: Path, config_dir: Path) -> None:
    """Refuses, before Hydra composes them, recorded task overrides (of a run or a sweep, from `record`) that act
    while Hydra composes: a key of Hydra's (hydra.searchpath imports a module), a package (@), an interpolation
    or a mapping anywhere in a value as Hydra parses it (Hydra resolves one while it composes: a group chosen by
    ${new_dir:...} makes a folder), and a config group's choice that is not a file of the group in `config_dir`
    (a path reads any YAML). The config composed from the rest passes run_config.

    Raises:
        UserError: one line naming the record and the override."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as e:  # Hydra's grammar refuses it
        raise UserError(f"{record} was refused: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    for override in parsed:
        key, values = override.key_or_group, list(parsed_values(override.value()))
        for value in values:
            if isinstance(value, str) and "${" in value:  # the same words as trust._check_interpolations
                kind = "calls a resolver" if RESOLVER_CALL.search(value) else "is an interpolation"
                raise UserError(
                    f"{record} was refused: {key}={value!r} {kind}, which Hydra resolves while it composes; a run's "
                    f"record holds plain values"
                )
        why = None
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            why = "sets a key of Hydra's, which a run records elsewhere (a search path imports modules)"
        elif override.package is not None:
            why = "places a config elsewhere (@package), which a run's record may not"
        elif any(isinstance(v, dict) for v in values):
            why = "holds a mapping: a run's record sets plain values and chooses configs"
        elif "." not in key and (config_dir / key).is_dir():
            stray = [v for v in values if not (isinstance(v, str) and GROUP_OPTION.fullmatch(v))]
            stray += [v for v in values if v not in stray and not (config_dir / key / f"{v}.yaml").is_file()]
            why = f"chooses {stray[0]!r}, which is not a config of configs/{key}" if stray else None
        if why:
            raise UserError(f"{record} was refused: {override.input_line} {why}; start a new run")


def parsed_values(value: Any) -> Iterator[Any]:
    """Every value in a parsed override's value: lists, a mapping's keys and values and sweeps' choices walked (a
    mapping also given itself)."""
    if isinstance(value, dict):
        yield value
        for key, item in value.items():
            yield key
            yield from parsed_values(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from parsed_values(item)
    elif isinstance(value, ChoiceSweep):
        yield from parsed_values(value.list)
    elif isinstance(value, Glob):
        yield from parsed_values([*value.include, *value.exclude])
    else:
        yield value
