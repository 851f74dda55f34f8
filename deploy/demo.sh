#!/usr/bin/env bash
# One command from a fresh clone: venv + install, then index a demo corpus into the embedded
# store with the shipped model and run a few queries. No servers, no downloads.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export CLAMP_INDEX_DATA_DIR="${CLAMP_INDEX_DATA_DIR:-.clamp-index}"
CLI=.venv/bin/clamp-index
CORPUS="$CLAMP_INDEX_DATA_DIR/demo-corpus"
# Folk tunes the shipped model never trained on, and WikiMT's pop/jazz lead sheets.
.venv/bin/python -m bench.folk "$CORPUS/folk"
.venv/bin/python -m bench.wikimt "$CORPUS/wikimt"
set -x
$CLI model
$CLI ingest "$CORPUS"
$CLI search "a lively jig" -k 5
$CLI search "a slow air in a minor key" -k 5
$CLI similar "$CORPUS/folk/oneills1850/1176-1275.abc" -k 5
$CLI classify "$CORPUS/folk/oneills1850/1176-1275.abc" --labels "jig,reel,hornpipe,waltz"
$CLI status
