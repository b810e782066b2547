"""Where a model set's target classifier runs: here (local) or on an upstream V2 server (proxy)."""
