"""hydra/launcher=slurm's launcher (Hydra finds launchers only in the hydra_plugins namespace package)."""
