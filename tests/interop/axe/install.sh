#!/usr/bin/env bash
# Installs the pinned axe-core (package-lock.json), the accessibility checker that
# tests/test_account_browser.py injects into the account pages in Chromium. Idempotent: skips
# `npm ci` when the locked version is already installed. Needs node + npm and the npm registry,
# nothing else; no install scripts run (axe-core has none: it is one JavaScript file).
set -euo pipefail
cd "$(dirname "$0")"
want="$(node -p "require('./package-lock.json').packages['node_modules/axe-core'].version")"
if [ -f node_modules/axe-core/package.json ] && \
   [ "$(node -p "require('./node_modules/axe-core/package.json').version")" = "$want" ]; then
    echo "axe-core $want already installed in $(pwd)/node_modules"
    exit 0
fi
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
echo "axe-core $want installed"
