#!/usr/bin/env bash
# Install memory-mcp from this checkout as a systemd service (docs/deploy.md, "systemd"):
#   a virtualenv in $PREFIX/venv (default /opt/memory-mcp) with the project installed into it,
#   the unit in /etc/systemd/system (with --socket, the socket unit too),
#   /etc/memory-mcp/env (a commented template; an existing one is kept),
#   memory-mcp-admin in /usr/local/sbin: the command line, run as the service's user on its data,
# then `systemctl daemon-reload`. Run it again from an updated checkout to upgrade, then
# `systemctl restart memory-mcp`.
#
#   sudo bash scripts/install-systemd.sh [--socket]
#
# PYTHON (default python3, 3.11 or newer) builds the virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/opt/memory-mcp}
PYTHON=${PYTHON:-python3}
UNITS=/etc/systemd/system
CONF=/etc/memory-mcp
ADMIN=/usr/local/sbin/memory-mcp-admin
socket=no
case "${1:-}" in
    "") ;;
    --socket) socket=yes ;;
    *) echo "usage: $0 [--socket]" >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then
    echo "install-systemd.sh: run it as root (it writes $PREFIX, $UNITS, $CONF and $ADMIN)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "install-systemd.sh: $PYTHON is not Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

# The virtualenv links to its Python: one under /home or /root would be hidden from the service
# (ProtectHome=yes) and it would fail to start.
base=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))')
case "$base/" in
    /home/*|/root/*|/run/user/*)
        echo "install-systemd.sh: $PYTHON lives in $base, which the service cannot see (ProtectHome=yes);" \
             "use a system-wide Python 3.11+, e.g. PYTHON=/usr/bin/python3" >&2
        exit 1 ;;
esac

# The virtualenv, owned by root and read-only to the service (ProtectSystem=strict).
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    "$PYTHON" -m venv "$PREFIX/venv"
fi
"$PREFIX/venv/bin/python" -m pip install --quiet --upgrade pip
"$PREFIX/venv/bin/python" -m pip install --quiet --upgrade .
echo "installed $("$PREFIX/venv/bin/memory-mcp" --version) in $PREFIX/venv"

sed "s|/opt/memory-mcp/venv/|$PREFIX/venv/|" scripts/memory-mcp.service > "$UNITS/memory-mcp.service"
chmod 0644 "$UNITS/memory-mcp.service"
echo "wrote $UNITS/memory-mcp.service"
if [ "$socket" = yes ]; then
    install -m 0644 scripts/memory-mcp.socket "$UNITS/memory-mcp.socket"
    echo "wrote $UNITS/memory-mcp.socket"
fi

install -d -m 0755 "$CONF"
if [ ! -e "$CONF/env" ]; then
    # Read by systemd as root before the service starts: it may hold secrets (a Redis password).
    install -m 0600 /dev/null "$CONF/env"
    cat > "$CONF/env" <<'EOF'
# memory-mcp settings: MEMORY_MCP_<NAME>=value, one per line (the README's settings table lists
# them all). Applied by `systemctl restart memory-mcp`.

# The origin clients use to reach the server (the reverse proxy's https URL).
#MEMORY_MCP_PUBLIC_URL=https://memory.example.com
# Where it listens (ignored with memory-mcp.socket, whose ListenStream= decides).
#MEMORY_MCP_HOST=127.0.0.1
#MEMORY_MCP_PORT=8000
# With the proxy on this machine, trust its X-Forwarded-For for client addresses.
#MEMORY_MCP_TRUSTED_PROXIES=127.0.0.1
# Store everything in Redis instead of the SQLite file in the state directory.
#MEMORY_MCP_REDIS_URL=redis://127.0.0.1:6379/0
# Seconds requests in flight get at shutdown; the unit's TimeoutStopSec must exceed 2 x this.
#MEMORY_MCP_SHUTDOWN_TIMEOUT=10
#MEMORY_MCP_LOG_LEVEL=info
EOF
    echo "wrote $CONF/env (a template: set MEMORY_MCP_PUBLIC_URL there)"
else
    echo "kept $CONF/env"
fi

# The command line as the service's own (dynamic) user, on the same state directory and settings:
# files it creates are the service's, and nothing runs as root on the data.
cat > "$ADMIN" <<EOF
#!/bin/sh
# memory-mcp's command line (users, sessions, tokens, ...) as the memory-mcp service's user.
# At a terminal it can prompt for a password; otherwise standard input and output are piped.
io=--pipe
[ -t 0 ] && [ -t 1 ] && io=--pty
exec systemd-run --quiet --wait --collect "\$io" --service-type=exec \\
    --property=DynamicUser=yes --property=User=memory-mcp --property=StateDirectory=memory-mcp --property=StateDirectoryMode=0700 \\
    --property=EnvironmentFile=-$CONF/env --setenv=MEMORY_MCP_DATA_DIR=/var/lib/memory-mcp \\
    $PREFIX/venv/bin/memory-mcp "\$@"
EOF
chmod 0755 "$ADMIN"
echo "wrote $ADMIN"

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
else
    echo "systemd is not running here: run 'systemctl daemon-reload' where it does"
fi

unit=memory-mcp.service
[ "$socket" = yes ] && unit=memory-mcp.socket
cat <<EOF

Next:
  1. Set MEMORY_MCP_PUBLIC_URL (and anything else) in $CONF/env.
  2. systemctl enable --now $unit
  3. Add an account:  memory-mcp-admin users add alice --password-stdin   (the password on stdin)
  4. journalctl -u memory-mcp -f    shows the log; systemctl status memory-mcp its state.
Upgrades: update this checkout, run this script again, then systemctl restart memory-mcp
(sessions and logins are in the store: nobody is signed out).
EOF
