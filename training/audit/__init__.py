"""The model audit's jobs: `python -m training.audit` (synthesise each class's trigger, flag the
target, repair by pruning or unlearning), `training.audit.tune`, `training.audit.joint`,
`training.audit.control` and `training.audit.report`. Their building blocks are in
training/inversion/."""
