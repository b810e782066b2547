"""The ground floor both halves stand on: the model contract (docs/model-contract.md).

The manifest schema, the detection scores and decision rules (de-trigger AE and STRIP), the
modes and detectors, and the domain errors as plain exceptions. No FastAPI, no torch, no
ONNX Runtime: ``service`` (online) and ``training`` (offline) import it; it imports neither.
"""
