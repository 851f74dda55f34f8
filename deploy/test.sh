#!/usr/bin/env bash
# One command from a fresh clone: venv + install, lint, then the whole test suite
# (slow end-to-end and service tests included; they need Redis and Postgres on 127.0.0.1).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
