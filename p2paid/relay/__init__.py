"""Relays: blind store-and-forward replicas, their server and metrics."""
