"""What a user runs: one recipe per command (train, evaluate, predict, export, summarize), each command's schema, the
sweepers and the command-line glue. The entry points at the top of the repository call these; nothing below
imports them (make lint checks it)."""
