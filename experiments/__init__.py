"""Thin entry points (absl mains) and their configs; the library is `research`."""
