#!/bin/sh
# Headless Chromium for tests/serving/test_preview.py (Debian's `chromium` package; no browser download
# from anywhere else). Run as root; a no-op when chromium is already installed.
set -eu
if command -v chromium >/dev/null 2>&1; then
    chromium --version
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
chromium --version
