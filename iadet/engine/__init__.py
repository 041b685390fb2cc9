"""Training machinery: distributed set-up, LR schedule, checkpoints, run folder, trainer."""
