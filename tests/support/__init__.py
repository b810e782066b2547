"""Helpers the test suites share: tiny ONNX model sets and a real uvicorn server."""
