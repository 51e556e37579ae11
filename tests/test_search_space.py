"""Search spaces Optuna cannot take (cifar_lightning/tasks/search_space.py): refused in one line naming the
override and the rule Optuna's distributions state, before the sweep claims a folder."""

import pytest
from conftest import run_script
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.tasks.search_space import search_space

REFUSED = [
    ("optimizer.lr=tag(log, interval(0, 0.01))", "low > 0 must hold for log=True"),
    ("optimizer.lr=tag(log, interval(-1e-3, 0.01))", "low > 0 must hold for log=True"),
    ("optimizer.lr=interval(0.01, 0.001)", "low <= high must hold"),
    ("epochs=tag(log, int(interval(0, 10)))", "low >= 1 must hold for log=True"),
    ("epochs=int(interval(5, 1))", "low <= high must hold"),
    ("batch_size=range(64, 32)", "the range has no values"),
    ("batch_size=range(32, 64, -8)", "the range has no values"),
    ("batch_size=range(32, 64, 0)", "its step must not be 0"),
    ("module.label_smoothing=range(0, 0.2, 0.0)", "its step must not be 0"),
    ("batch_size=shuffle(range(32, 64, 0))", "its step must not be 0"),
    ("batch_size=shuffle(range(64, 32))", "must contain one or more elements"),
    ("model=glob(*)", "the Optuna sweeper searches choice(), range() and interval() sweeps"),
]


@pytest.mark.parametrize("override, rule", REFUSED)
def test_a_space_optuna_refuses_is_one_line_naming_the_override_and_the_rule(override, rule):
    with pytest.raises(UserError) as refused:
        search_space(["epochs=1", override])
    message = str(refused.value)
    assert message.startswith(f"{override} is not a search space Optuna takes: ") and rule in message
    assert "\n" not in message and "`" not in message


def test_the_configs_params_are_named_as_the_key_that_overrides_them():
    with pytest.raises(UserError, match=r"^hydra\.sweeper\.params\.optimizer\.lr=tag\(log, interval\(0, 1\)\) is"):
        search_space([], {"optimizer.lr": "tag(log, interval(0, 1))"})
    with pytest.raises(UserError, match=r"^hydra\.sweeper\.params\.batch_size=choice\(\): .*empty choice is not legal"):
        search_space([], {"batch_size": "choice()"})
    # the command line's override of a key replaces the config's: only the one that applies is judged
    space, fixed = search_space(["optimizer.lr=interval(0.001, 0.01)"], {"optimizer.lr": "tag(log, interval(0, 1))"})
    assert space == {"optimizer.lr": FloatDistribution(0.001, 0.01)} and fixed == []


@pytest.mark.parametrize(
    "override, expected",
    [
        ("batch_size=range(32, 65, 16)", IntDistribution(32, 64, step=16)),
        ("batch_size=range(64, 31, -16)", IntDistribution(32, 64, step=16)),  # descending: the same set
        ("batch_size=range(0, 10, 3)", IntDistribution(0, 9, step=3)),  # the step need not divide the range
        ("x=range(0, 1, 0.3)", FloatDistribution(0.0, 0.9, step=0.3)),  # not cut to 0.6 by Hydra's 0.8999999999999999
        ("x=range(1, 0, -0.3)", FloatDistribution(0.1, 1.0, step=0.3)),
        ("x=interval(0.1, 0.1)", FloatDistribution(0.1, 0.1)),
        ("x=tag(log, interval(1e-4, 1e-2))", FloatDistribution(1e-4, 1e-2, log=True)),
        ("epochs=tag(log, int(interval(1, 8)))", IntDistribution(1, 8, log=True)),
        ("batch_size=choice(32, 64)", CategoricalDistribution([32, 64])),
    ],
)
def test_a_space_optuna_takes_is_the_set_of_values_written(override, expected):
    key = override.split("=")[0]
    assert search_space([override]) == ({key: expected}, [])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "optimizer.lr=tag(log, interval(0, 0.01))",
            "optimizer.lr=tag(log, interval(0, 0.01)) is not a search space Optuna takes: low > 0 must hold for "
            "log=True, but got (low=0.0, high=0.01)",
        ),
        (
            "hydra.sweeper.params.batch_size='range(64, 32)'",
            "hydra.sweeper.params.batch_size=range(64, 32) is not a search space Optuna takes: the range has no "
            "values (its end must lie beyond its start in the step's direction)",
        ),
    ],
)
def test_a_search_refused_leaves_no_sweep_folder(tmp_path, override, message):
    result = run_script("train.py", "-m", "hparams_search=optuna", "data=synthetic", override, f"paths.root={tmp_path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert not (tmp_path / "multiruns").exists()
