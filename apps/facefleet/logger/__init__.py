"""The logger service."""
