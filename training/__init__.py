"""Offline pipeline: datasets, BadNets poisoning, target models, de-trigger autoencoders,
detection, evaluation and ONNX export for the detrigger-guard model sets."""
