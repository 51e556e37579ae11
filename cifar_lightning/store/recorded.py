"""The gate for the overrides a run or a sweep recorded (.hydra/overrides.yaml, multirun.yaml), read from disk and
so possibly crafted: checked as Hydra parses them, before Hydra composes anything from them (what composition
itself does, it does before any check of the composed config in trust.run_config)."""

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob, Override

from cifar_lightning.blocks.errors import UserError, first_line

# A resolver call, ${name:...}: named in the refusal of an interpolation
RESOLVER_CALL = re.compile(r"\$\{\s*[\w.\-]+\s*:")
GROUP_OPTION = re.compile(r"[\w\-]+")  # a config file's name in its group's folder: no path
# The Hydra overrides a resumed sweep takes from its multirun.yaml: which sweeper and launcher, and their search
# and resource keys; nothing that moves files (sweep.subdir, job_logging), sets the environment or runs commands
RECORDED_HYDRA = ("hydra.mode", "hydra/sweeper", "hydra/launcher")
RECORDED_SWEEPER = ("sampler", "direction", "study_name", "n_trials", "n_jobs", "max_failure_rate", "params", "pruner")
RECORDED_LAUNCHER = (
    "partition", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism",
    "nodes", "qos", "account", "constraint", "comment", "max_num_timeout", "n_jobs",
)  # fmt: skip
REMOTE_STORAGE = ("postgresql", "mysql", "oracle", "mssql")  # an RDB server: nothing written here
NEW_RUN = "; start a new run"  # what a run refused for its record can do


def check_recorded_overrides(overrides: Sequence[str], record: Path, config_dir: Path) -> None:
    """Refuses, before Hydra composes them, recorded task overrides (of a run or a sweep, from `record`) that act
    while Hydra composes (see `composing_effect`), a key of Hydra's (hydra.searchpath imports a module; Hydra
    records its own overrides elsewhere), and a config group's choice that is not a file of the group in
    `config_dir` (a path reads any YAML). The config composed from the rest passes run_config.

    Raises:
        UserError: one line naming the record and the override."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as e:  # Hydra's grammar refuses it
        raise UserError(f"{record} was refused: {first_line(e)}") from None
    for override in parsed:
        key, values = override.key_or_group, list(parsed_values(override.value()))
        why = composing_effect(override)
        if why is None and (key == "hydra" or key.startswith(("hydra.", "hydra/"))):
            why = f"{override.input_line} sets a key of Hydra's, which a run records elsewhere (a search path imports "
            why += f"modules){NEW_RUN}"
        elif why is None and "." not in key and (config_dir / key).is_dir():
            stray = [v for v in values if not (isinstance(v, str) and GROUP_OPTION.fullmatch(v))]
            stray += [v for v in values if v not in stray and not (config_dir / key / f"{v}.yaml").is_file()]
            if stray:
                why = f"{override.input_line} chooses {stray[0]!r}, which is not a config of configs/{key}{NEW_RUN}"
        if why:
            raise UserError(f"{record} was refused: {why}")


def check_recorded_hydra_override(override: str, sweep: Path, root: Path | None) -> None:
    """Refuses a Hydra override of a sweep's multirun.yaml that a resumed sweep does not take from disk (see
    RECORDED_HYDRA), or that acts while Hydra composes (see `composing_effect`) or chooses a sweeper or launcher
    by a path; an Optuna storage must be a database server or a SQLite file under the sweep's runs root.

    Raises:
        UserError: naming the record, the override and what to do."""
    key, _, value = override.lstrip("+~").partition("=")
    parts = key.split(".")
    try:
        parsed: Override | None = OverridesParser.create().parse_override(override)
    except Exception:  # Hydra's grammar refuses it
        parsed = None
    plain = parsed is not None and composing_effect(parsed) is None
    if parsed is not None and key in ("hydra/sweeper", "hydra/launcher"):
        plain = plain and all(isinstance(v, str) and GROUP_OPTION.fullmatch(v) for v in parsed_values(parsed.value()))
    allowed = (
        key in RECORDED_HYDRA
        or (parts[:2] == ["hydra", "sweeper"] and len(parts) > 2 and parts[2] in RECORDED_SWEEPER)
        or (parts[:2] == ["hydra", "launcher"] and len(parts) == 3 and parts[2] in RECORDED_LAUNCHER)
    )
    if key == "hydra.sweeper.storage":
        scheme, _, path = value.strip("'\"").partition(":///")
        inside = scheme == "sqlite" and Path(path).resolve().is_relative_to((root or sweep).resolve())
        allowed = scheme.split("+")[0] in REMOTE_STORAGE or inside
    if not (allowed and plain):
        raise UserError(
            f"{sweep / 'multirun.yaml'} records {override}, which a resumed sweep does not take from disk: "
            f"start the sweep anew"
        )


def composing_effect(override: Override) -> str | None:
    """Why a parsed override read from a record would act while Hydra composes (or builds a sweeper from) it, as
    the end of a refusal; None if it sets plain values only. An interpolation anywhere in its value (Hydra resolves
    one: a group chosen by ${new_dir:...} makes a folder), a package (@), a mapping (built with its _target_)."""
    values = list(parsed_values(override.value()))
    for value in values:
        if isinstance(value, str) and "${" in value:  # the same words as trust._check_interpolations
            kind = "calls a resolver" if RESOLVER_CALL.search(value) else "is an interpolation"
            return (
                f"{override.key_or_group}={value!r} {kind}, which Hydra resolves while it composes; a run's record "
                f"holds plain values"
            )
    if override.package is not None:
        return f"{override.input_line} places a config elsewhere (@package), which a run's record may not{NEW_RUN}"
    if any(isinstance(v, dict) for v in values):
        return f"{override.input_line} holds a mapping: a run's record sets plain values and chooses configs{NEW_RUN}"
    return None


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
