"""Sweeps that survive a crash and prune: the project's sweepers (cifar_lightning/tasks/sweepers.py,
optuna_sweeper.py) on real runs."""

import csv
import json
import signal

import optuna
import pytest
import yaml
from conftest import FAST, HELPERS_ENV, NARROW, compose_train, run_script, start_script, write_folder
from test_resume import epochs_logged, kill_mid_epoch

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.tasks.train import train

TINY = [o for o in FAST if not o.startswith(("epochs=", "data.val_size="))] + [
    "data=synthetic",
    "data.val_size=200",
    "extras.print_config=false",
    "trainer.deterministic=true",
]
SLOW = ["+callbacks.slow._target_=helpers.SlowSteps", "+callbacks.slow.seconds=0.04"]
# an Optuna search over the command line's choice() lists only, trial by trial through Optuna's GridSampler
GRID_SEARCH = [
    "hydra.sweeper.params=null",
    "~hydra.sweeper.sampler.n_startup_trials",
    "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",
    "hydra.sweeper.sampler.seed=0",
]


def summary_rows(sweep, ignore=()) -> dict[str, tuple]:
    """python -m cifar_lightning.tasks.summarize SWEEP, read back: (best val acc, test acc, epochs, status) per
    overrides, leaving out the overrides in `ignore`."""
    result = run_script("-m", "cifar_lightning.tasks.summarize", str(sweep))
    assert result.returncode == 0, result.stderr[-2000:]
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    fields = ("best_val_acc", "test_acc", "epochs", "status")
    return {" ".join(o for o in r["overrides"].split() if o not in ignore): tuple(r[k] for k in fields) for r in rows}


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["optimized_metric=test_loss"],
            "hydra.sweeper.direction=maximize would optimise optimized_metric=test_loss the wrong way: set "
            "hydra.sweeper.direction=minimize",
        ),
        (
            ["optimized_metric=fit_seconds", "hydra.sweeper.direction=minimize"],
            "the pruner judges trials by their val/acc, which is to be maximised, not fit_seconds: add "
            "hydra.sweeper.pruner=null",
        ),
    ],
)
def test_a_search_that_would_optimise_the_wrong_way_is_refused_before_any_trial(tmp_path, overrides, message):
    result = run_script("train.py", "-m", "hparams_search=optuna", *overrides, f"paths.root={tmp_path}")
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert not (tmp_path / "multiruns").exists() or not any((tmp_path / "multiruns").rglob("*.ckpt"))


def test_a_trial_whose_run_would_lack_its_metric_is_refused_before_training(tmp_path):
    trial = "trial={storage: 'sqlite:///unused.db', study_name: s, number: 0}"  # refused before it is opened
    no_test = write_folder(tmp_path / "folder", test=False)
    for overrides, message in (
        (["data=synthetic", "data.val_size=0"], "optimized_metric=best_val_acc needs validation"),
        (["data=folder", f"data.root={no_test}", "data.val_size=6", "optimized_metric=test_acc"], "test_acc needs a"),
    ):
        cfg = compose_train([*FAST, *overrides, trial], tmp_path / "run")
        with pytest.raises(UserError, match=message):
            train(cfg)
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_resuming_a_folder_that_is_not_a_sweep_is_one_line(tmp_path):
    result = run_script("train.py", "-m", f"resume={tmp_path}", f"paths.root={tmp_path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: resume=") and "multirun.yaml does not exist, so it is not a sweep folder" in last
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_resuming_a_sweep_with_other_overrides_is_one_line(tmp_path):
    (tmp_path / "multirun.yaml").write_text("hydra: {overrides: {hydra: [], task: [seed=1]}}\n")
    for other in ("epochs=3", "hydra/launcher=submitit_local"):
        result = run_script("train.py", "-m", f"resume={tmp_path}", other, f"paths.root={tmp_path}")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].endswith(f"started with; drop {other}")


def test_a_resumed_sweep_builds_nothing_its_record_names_outside_the_allow_list(tmp_path):
    """multirun.yaml may come from anywhere: a job that runs fresh is checked as a resumed run's config is."""
    evil = ["+callbacks.evil._target_=os.system", f"+callbacks.evil.command='touch {tmp_path}/pwned'"]
    task = [*evil, "data=synthetic", "seed=1,2"]
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"hydra": [], "task": task}}}))
    result = run_script("train.py", "-m", f"resume={tmp_path}", f"paths.root={tmp_path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "was refused: callbacks.evil._target_='os.system'" in last
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "0").exists()


@pytest.mark.parametrize(
    "hydra, task, message",
    [
        # a recorded trusted_modules is not the user's: the allow-list still refuses io.FileIO
        ([], ["trusted_modules=[io]", "+callbacks.x._target_=io.FileIO", "+callbacks.x.file={marker}"], "io.FileIO"),
        (["hydra.sweep.subdir={marker}"], [], "records hydra.sweep.subdir="),
        (["hydra.job.env_set.PATH={marker}"], [], "records hydra.job.env_set.PATH="),
        (["hydra.job_logging.handlers.file.filename={marker}"], [], "records hydra.job_logging"),
        (["hydra.sweeper.storage=sqlite:///{marker}"], [], "records hydra.sweeper.storage="),
        # task overrides that act while Hydra composes each job: a search path, a group chosen by a resolver
        ([], ["hydra.searchpath=[pkg://this]"], "hydra.searchpath=[pkg://this] sets a key of Hydra's"),
        ([], ["model=${{new_dir:{marker}}}"], "model='${new_dir:"),
        ([], ["+extras.a=$\\{{new_dir:{marker}\\}}", "~extras.a"], "calls a resolver"),
        # Hydra overrides that build or read something while the sweeper is made
        (["+hydra.sweeper.params.x={{_target_:os.makedirs,name:{marker}}}"], [], "records +hydra.sweeper.params.x="),
        (["hydra/sweeper=../../../../x"], [], "records hydra/sweeper=../../../../x"),
    ],
)
def test_a_sweep_record_cannot_choose_where_files_go_or_what_is_trusted(tmp_path, hydra, task, message):
    root = tmp_path / "outputs"
    sweep, marker = root / "multiruns" / "sweep", tmp_path / "marker"  # outside the runs root
    sweep.mkdir(parents=True)
    record = {"hydra": [o.format(marker=marker) for o in hydra], "task": [o.format(marker=marker) for o in task]}
    record["task"] += ["data=synthetic", "seed=1,2"]
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": record}}))
    result = run_script("train.py", "-m", f"resume={sweep}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert not marker.exists() and not (sweep / "0").exists()


def test_an_unknown_pruner_is_one_line(tmp_path):
    result = run_script(
        "train.py",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.pruner._target_=optuna.pruners.MedianPrunr",
        *TINY,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"paths.root={tmp_path}",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: hydra.sweeper.pruner._target_='optuna.pruners.MedianPrunr' is not an Optuna pruner")
    assert "MedianPruner" in last and not (tmp_path / "sweep").exists()  # refused before any trial


# ------------------------------------------------------------------------------------------------ pruning
def search(tmp_path, name, pruner):
    """4 trials of the MLP, one after another: lr 3e-3 learns the synthetic classes, 1e-7 cannot; calibration
    changes nothing in (deterministic) training, so the two learning trials have one curve. GridSampler seed 0 runs
    them good, bad, bad, good."""
    sweep = tmp_path / name
    result = run_script(
        "train.py",
        "-m",
        "hparams_search=optuna",
        *(o for o in TINY if o != NARROW),
        "model=mlp",
        "epochs=3",
        "batch_size=200",
        "optimizer.lr=choice(3e-3,1e-7)",
        "calibration=choice(temperature,none)",
        "hydra.sweeper.n_trials=4",
        *GRID_SEARCH,
        *pruner,
        f"hydra.sweep.dir={sweep}",
        f"paths.root={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep


@pytest.mark.slow
def test_a_search_prunes_the_trials_that_cannot_learn_and_trains_fewer_epochs(tmp_path):
    pruned = search(
        tmp_path, "pruned", ["hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0"]
    )
    full = search(tmp_path, "full", ["hydra.sweeper.pruner=null"])

    def epochs(sweep):
        return sum(len(epochs_logged(job)) for job in sweep.iterdir() if job.name.isdigit())

    assert epochs(full) == 4 * 3
    assert epochs(pruned) <= 0.7 * epochs(full)  # 3 + 1 + 1 + 3
    best = [yaml.safe_load((s / "optimization_results.yaml").read_text()) for s in (pruned, full)]
    assert best[0]["best_params"] == best[1]["best_params"] and best[0]["best_params"]["optimizer.lr"] == 3e-3
    study = optuna.load_study(study_name="cifar_lightning", storage=f"sqlite:///{pruned / 'optuna.db'}")
    states = {t.params["optimizer.lr"]: set() for t in study.trials}
    for t in study.trials:
        states[t.params["optimizer.lr"]].add(t.state)
    assert states == {3e-3: {optuna.trial.TrialState.COMPLETE}, 1e-7: {optuna.trial.TrialState.PRUNED}}
    assert all(len(t.intermediate_values) == len(epochs_logged(pruned / str(t.number))) for t in study.trials)
    rows = summary_rows(pruned)
    assert sorted(status for *_, status in rows.values()) == ["done", "done", "pruned", "pruned"]
    assert all("trial=" not in overrides for overrides in rows)  # the sweeper's bookkeeping is not a setting
    hopeless = [
        j for j in pruned.iterdir() if j.name.isdigit() and "lr=1e-07" in (j / ".hydra/overrides.yaml").read_text()
    ]
    assert len(hopeless) == 2
    for job in hopeless:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["pruned"] is True and summary["epochs"] == 1 and summary["test_acc"] is not None
        assert (job / "checkpoints" / "last.ckpt").is_file() and (job / "checkpoints" / "best.ckpt").is_file()
    resumed = run_script("train.py", f"resume={job}")  # a pruned run is finished: resume leaves it as it is
    assert resumed.returncode == 0 and "finished already: nothing to resume" in resumed.stdout + resumed.stderr


# ------------------------------------------------------------------------------------------------ resume
GRID = ["optimizer.lr=3e-3", "seed=1,2,3", *TINY, "epochs=2", "callbacks.early_stopping=null"]


@pytest.mark.slow
def test_a_killed_grid_sweep_resumes_to_the_rows_of_an_uninterrupted_one(tmp_path):
    sweep, go = tmp_path / "killed", tmp_path / "go"  # go: made once killed, the resumed jobs run at full speed
    slow = [*SLOW, f"+callbacks.slow.until={go}"]
    process = start_script(
        "train.py", "-m", *GRID, *slow, f"hydra.sweep.dir={sweep}", f"paths.root={tmp_path}", env=HELPERS_ENV
    )
    kill_mid_epoch(process, sweep / "1" / "checkpoints" / "last.ckpt", epoch=0)  # job 0 done, job 2 not started
    go.touch()
    assert process.returncode == -signal.SIGKILL
    assert not (sweep / "1" / "summary.json").exists() and not (sweep / "2").exists()
    first_summary = (sweep / "0" / "summary.json").read_text()

    resumed = run_script(
        "train.py", "-m", f"resume={sweep}", f"paths.root={tmp_path}", "trusted_modules=[helpers]", env=HELPERS_ENV
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2"]
    assert all(epochs_logged(sweep / j) == [0, 1] for j in jobs)  # every epoch once
    assert (sweep / "0" / "summary.json").read_text() == first_summary  # kept, not rerun

    # the same sweep, never killed and without the slowing callback (it only sleeps): the same numbers
    uninterrupted = tmp_path / "uninterrupted"
    result = run_script("train.py", "-m", *GRID, f"hydra.sweep.dir={uninterrupted}", f"paths.root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_rows(sweep, ignore=slow) == summary_rows(uninterrupted)


@pytest.mark.slow
def test_a_killed_optuna_search_retries_the_interrupted_trial_in_its_folder(tmp_path):
    sweep, go = tmp_path / "search", tmp_path / "go"  # go: made once killed, the retried trial runs at full speed
    process = start_script(
        "train.py",
        "-m",
        "hparams_search=optuna",
        *TINY,
        "epochs=2",
        "callbacks.early_stopping=null",
        *SLOW,
        f"+callbacks.slow.until={go}",
        "optimizer.lr=choice(3e-3,5e-3)",
        "hydra.sweeper.n_trials=2",
        *GRID_SEARCH,
        f"hydra.sweep.dir={sweep}",
        f"paths.root={tmp_path}",
        env=HELPERS_ENV,
    )
    kill_mid_epoch(process, sweep / "1" / "checkpoints" / "last.ckpt", epoch=0)
    go.touch()
    resumed = run_script(
        "train.py", "-m", f"resume={sweep}", f"paths.root={tmp_path}", "trusted_modules=[helpers]", env=HELPERS_ENV
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = optuna.load_study(study_name="cifar_lightning", storage=f"sqlite:///{sweep / 'optuna.db'}").trials
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]  # n_trials complete, plus the interrupted one
    dead, retry = trials[1], trials[2]
    assert dead.user_attrs["interrupted"] is True and retry.user_attrs["retry_of"] == dead.number
    assert retry.params == dead.params and retry.user_attrs["job"] == dead.user_attrs["job"] == 1
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert epochs_logged(sweep / "1") == [0, 1]  # resumed from the dead trial's last.ckpt: no epoch twice
    summary = json.loads((sweep / "1" / "summary.json").read_text())
    assert retry.value == pytest.approx(summary["best_val_acc"])
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(trials[0].value, retry.value)
