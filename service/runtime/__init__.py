"""ONNX Runtime: the thin session wrapper and a loaded, verified model set."""
