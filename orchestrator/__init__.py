"""Decides what runs: job planning, queries, the CLI (no torch at import time)."""
