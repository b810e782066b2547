"""Data: datasets, triggers, the random trigger sampler, augmentation and the attack suite."""
