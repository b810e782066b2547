"""The model audit (Neural Cleanse-style trigger synthesis, then pruning and unlearning): its
building blocks, and its jobs `python -m training.audit`, `training.audit.tune`,
`training.audit.joint`, `training.audit.control` and `training.audit.report`."""
