#!/usr/bin/env bash
# Installs the pinned OpenID provider (oidc-provider, package-lock.json) that
# tests/test_upstream_oidc.py and the upstream runs of the Codex and Claude Code interop tests
# sign in through. Idempotent: skips `npm ci` when the locked version is already installed.
# Needs node + npm (Node >= 18) and the npm registry, nothing else; no install scripts run.
set -euo pipefail
cd "$(dirname "$0")"
want="$(node -p "require('./package-lock.json').packages['node_modules/oidc-provider'].version")"
if [ -f node_modules/oidc-provider/package.json ] && \
   [ "$(node -p "require('./node_modules/oidc-provider/package.json').version")" = "$want" ]; then
    echo "oidc-provider $want already installed in $(pwd)/node_modules"
    exit 0
fi
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
echo "oidc-provider $want installed"
