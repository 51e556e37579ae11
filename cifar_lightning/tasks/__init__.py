"""The tasks: each wires the building blocks of the package into one thing a user runs (train, evaluate,
predict, export, summarize a sweep, resume a run). The entry points at the top of the repository call these."""
