"""Trigger inversion and repair, the model audit's building blocks (Menisov et al.; Neural
Cleanse): synthesise each class's smallest trigger, score the classes' anomaly, identify the
target, restart from the corners, prune or unlearn, render the audit's report."""
