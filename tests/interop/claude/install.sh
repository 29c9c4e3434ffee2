#!/usr/bin/env bash
# Installs the pinned Claude Code CLI (package-lock.json) into tests/interop/claude/node_modules.
# Idempotent: `npm ci` starts from the lock file every time, and the npm cache (~/.npm) makes a
# rerun fast. The linux x64 binary comes inside the registry package
# @anthropic-ai/claude-code-linux-x64@<v> (an optional dependency); the main package's postinstall
# (install.cjs) only links it over bin/claude.exe, so nothing is downloaded at install or run time.
# The package asks for node >= 22 (an EBADENGINE warning under node 20): it runs no node code at
# run time, the binary is self-contained.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
want="$(node -p "require('$here/package.json').dependencies['@anthropic-ai/claude-code']")"
if [ -x "$here/node_modules/.bin/claude" ] && \
   [ "$("$here/node_modules/.bin/claude" --version 2>/dev/null)" = "$want (Claude Code)" ]; then
    echo "Claude Code $want already installed in $here/node_modules"
    exit 0
fi
npm ci --prefix "$here" --no-audit --no-fund --prefer-offline
"$here/node_modules/.bin/claude" --version
