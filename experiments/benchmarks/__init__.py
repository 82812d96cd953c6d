"""Micro-benchmarks (not tests): each module is an absl main that prints its measurements."""
