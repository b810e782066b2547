"""make bench: the guard's throughput and latency against a real uvicorn, and the ORT ceiling."""
