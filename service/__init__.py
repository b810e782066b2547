"""detrigger-guard: the REST inference guard that flags backdoor images with a de-trigger AE."""
