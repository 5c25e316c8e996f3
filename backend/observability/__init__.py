"""Metrics, readiness and request ids: what operators see of a running hub."""
