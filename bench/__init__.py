"""make bench: the guard against MLServer serving the bare target, in one run, with wrk; the
in-process ONNX Runtime ceiling; a py-spy profile (bench/run.py). bench/mlserver.py also serves
the sidecar tests' upstream."""
