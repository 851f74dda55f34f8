#!/usr/bin/env bash
# One command from a fresh clone: venv + install, lint, then the whole test suite
# (slow end-to-end and service tests included; they need Redis and Postgres on 127.0.0.1).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
# The web page's browser test drives Debian's Chromium through its own chromedriver (Selenium
# is told where it is, so it never downloads a browser).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    NEED_CHROMIUM="the browser test needs /usr/bin/chromium and /usr/bin/chromedriver:"
    NEED_CHROMIUM+=" as root run \`apt-get install -y chromium chromium-driver\`, then this again"
    if ! command -v apt-get > /dev/null; then
        echo "clamp-index: $NEED_CHROMIUM (Debian packages; no apt-get here)" >&2
        exit 1
    elif [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif command -v sudo > /dev/null; then
        SUDO=(sudo)
    else
        echo "clamp-index: $NEED_CHROMIUM" >&2
        exit 1
    fi
    echo "clamp-index: installing chromium and chromium-driver for the browser test" >&2
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq chromium chromium-driver
fi
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
