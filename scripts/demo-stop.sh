#!/usr/bin/env bash
# make demo-stop: stop the demo's services, then its agent and coordinator.
set -uo pipefail
cd "$(dirname "$0")/.."
demo=$PWD/.demo
[[ -S $demo/agent.sock ]] && bin/dhctl --socket "$demo/agent.sock" down --local --block --timeout 60s
for d in dhcoord dhagent; do
  if [[ -f $demo/$d.pid ]]; then
    kill "$(cat "$demo/$d.pid")" 2>/dev/null || true
    rm -f "$demo/$d.pid"
  fi
done
echo "demo stopped"
