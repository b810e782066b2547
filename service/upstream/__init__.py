"""Proxy mode: the pooled client of an upstream V2 server and its circuit breaker."""
