"""Fit: the training loops of the target classifier and of the de-trigger AE, shared by the jobs
that train (train_target, train_detrigger, reproduce, suite, swap_detrigger, the audit's jobs)."""
