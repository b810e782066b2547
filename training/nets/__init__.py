"""Nets: target classifiers, de-trigger autoencoders, checkpoints, ONNX export and loading."""
