"""The building blocks: what a research script would hold (nets, augmentations, optimizers, schedules, the data,
the LightningModule, metrics, corruptions, calibration, callbacks, figures). They know nothing of run folders or
the command line, and import nothing of the store or the tasks (make lint checks it)."""
