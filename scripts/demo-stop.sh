#!/usr/bin/env bash
# make demo-stop: stop the demo's services, then its agent.
set -uo pipefail
cd "$(dirname "$0")/.."
demo=$PWD/.demo
[[ -S $demo/agent.sock ]] && bin/dhctl --socket "$demo/agent.sock" down --block --timeout 60s
if [[ -f $demo/dhagent.pid ]]; then
  kill "$(cat "$demo/dhagent.pid")" 2>/dev/null || true
  rm -f "$demo/dhagent.pid"
fi
echo "demo stopped"
