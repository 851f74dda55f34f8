#!/usr/bin/env bash
# One command from a fresh clone: venv + install, then index WikiMT into the embedded store
# and run a few queries. No servers needed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export CLAMP_INDEX_DATA_DIR="${CLAMP_INDEX_DATA_DIR:-.clamp-index}"
CLI=.venv/bin/clamp-index
$CLI init-demo-model
.venv/bin/python -m bench.wikimt "$CLAMP_INDEX_DATA_DIR/wikimt-abc"
$CLI ingest "$CLAMP_INDEX_DATA_DIR/wikimt-abc"
echo '$ clamp-index search "a lively jig in D" -k 5'
$CLI search "a lively jig in D" -k 5
echo '$ clamp-index similar wikimt-abc/0000.abc -k 5'
$CLI similar "$CLAMP_INDEX_DATA_DIR/wikimt-abc/0000.abc" -k 5
$CLI status
