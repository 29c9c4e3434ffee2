#!/usr/bin/env bash
# Installs the pinned OpenAI Codex CLI (package-lock.json) into tests/interop/codex/node_modules.
# Idempotent: `npm ci` starts from the lock file every time, and the npm cache (~/.npm) makes a
# rerun fast. The linux x64 binary comes inside the registry package @openai/codex@<v>-linux-x64
# (an optional dependency), so nothing is downloaded at run time.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
want="$(node -p "require('$here/package.json').dependencies['@openai/codex']")"
if [ -x "$here/node_modules/.bin/codex" ] && \
   [ "$("$here/node_modules/.bin/codex" --version 2>/dev/null)" = "codex-cli $want" ]; then
    echo "codex-cli $want already installed in $here/node_modules"
    exit 0
fi
npm ci --prefix "$here" --no-audit --no-fund --prefer-offline
"$here/node_modules/.bin/codex" --version
