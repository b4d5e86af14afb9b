#!/bin/sh
# Make sure Debian's Chromium is installed for the browser tests (tests/web/test_browser.py): Playwright drives
# /usr/bin/chromium, since it cannot download a browser of its own here. `make test` runs this before pytest.
# Installed already: nothing to do. Root: install it with apt-get. Anyone else: one line saying how, exit 2.
set -eu
CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "the browser tests need Chromium at $CHROMIUM: run 'sudo apt-get install -y chromium' (or make test as root)" >&2
    exit 2
fi
echo "installing chromium for the browser tests (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
[ -x "$CHROMIUM" ] || { echo "apt-get installed chromium but $CHROMIUM is missing" >&2; exit 2; }
