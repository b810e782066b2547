"""Evaluation: metrics, detection rules, detectors, model-set evaluation and report rendering."""
