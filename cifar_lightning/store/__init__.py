"""What lives on disk between commands: the run and sweep folders, checkpoints and the one gate for what they
name, MLflow tracking and registry. Imports only the building blocks (make lint checks it)."""
