"""Entry point of `python -m orchestrator.training` (see cli.py)."""

from orchestrator.training.cli import main

main()
