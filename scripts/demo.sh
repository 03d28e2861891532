#!/usr/bin/env bash
# make demo: a single-node Deephaven "cluster" of stand-in services under
# dhagent, on the shipped roles and defaults, then `dhctl status`.
# Stop it with `make demo-stop`; everything lives in .demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
demo=$root/.demo
mkdir -p "$demo"

if [[ -S $demo/agent.sock ]] && bin/dhctl --socket "$demo/agent.sock" status >/dev/null 2>&1; then
  echo "demo already running; showing status (make demo-stop to end it)"
else
  # The stand-ins play the JVMs: each listens on its service's ports from
  # roles/services.yaml. Services run as the demo user instead of irisadmin,
  # dbquery and dbmerge, and log under .demo/logs instead of /var/log/deephaven.
  cat >"$demo/agent.yaml" <<YAML
node: demo
roles: [single-node]
state_dir: state
socket: agent.sock
log_root: logs
vars:
  standin: $root/bin/dh-standin
defaults:
  user: ""
  command: ['{{var "standin"}}', '--name={{.Name}}', '--ports={{.Ports}}', '--record={{.LogRoot}}/starts.log']
YAML
  bin/dhctl validate "$demo/agent.yaml" >/dev/null
  setsid bin/dhagent --config "$demo/agent.yaml" >>"$demo/dhagent.log" 2>&1 < /dev/null &
  echo $! >"$demo/dhagent.pid"
  for _ in $(seq 50); do [[ -S $demo/agent.sock ]] && break; sleep 0.1; done
  echo "dhagent started (pid $(cat "$demo/dhagent.pid"), log .demo/dhagent.log); waiting for services..."
  bin/dhctl --socket "$demo/agent.sock" up --block --timeout 60s >/dev/null || true
fi
echo
bin/dhctl --socket "$demo/agent.sock" status || true
cat <<EOT

Try:  export DHVISOR_SOCKET=$demo/agent.sock
      kill -9 \$(bin/dhctl status --json | grep -m1 '"pid"' | tr -dc 0-9); bin/dhctl status
      bin/dhctl restart authentication_server --block
      bin/dhctl down --block; bin/dhctl up --block
Stop: make demo-stop
EOT
