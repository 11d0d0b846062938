#!/usr/bin/env bash
# A headless browser for the `browser` tests (tests/ui/): Debian's `chromium` and `chromium-driver`
# packages (browser downloads are impossible where this project runs), and Selenium with the Python
# that runs the tests. Used by .ci/run and by developers alike:
#
#   scripts/browser.sh           # install what is missing (as root: `apt-get update` once, then
#                                # `apt-get install -y chromium chromium-driver`), then say versions
#   python -m pytest -m browser
#
# Idempotent: what is installed is left alone. Without root it says what to install.
# Environment (optional): PYTHON.
set -euo pipefail

PYTHON=${PYTHON:-$(command -v python || command -v python3 || true)}
say() { echo "browser: $*" >&2; }

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        say "not root: install Debian's chromium and chromium-driver packages, then run this again"
        exit 1
    fi
    command -v apt-get >/dev/null || { say "no apt-get here: install chromium and chromedriver"; exit 1; }
    say "installing chromium and chromium-driver (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
if [ -n "$PYTHON" ] && ! "$PYTHON" -c "import selenium" 2>/dev/null; then
    "$PYTHON" -m pip install -q "selenium>=4.10"
fi
say "$(chromium --version 2>/dev/null | head -n 1); $(chromedriver --version 2>/dev/null | head -n 1)"
