#!/usr/bin/env bash
# make demo: a single-node Deephaven "cluster" of stand-in services under
# dhagent, with one dhcoord coordinating it, on the shipped roles and
# defaults and the demo's own cluster CA; then `dhctl status`.
# Stop it with `make demo-stop`; everything lives in .demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
demo=$root/.demo
mkdir -p "$demo"
export DHCTL_CONFIG=$demo/dhctl.yaml

if [[ -S $demo/agent.sock ]] && bin/dhctl --socket "$demo/agent.sock" status --local >/dev/null 2>&1; then
  echo "demo already running; showing status (make demo-stop to end it)"
else
  # Every TCP port speaks mutual TLS: a cluster CA, and a certificate each
  # for the agent, the coordinator and you (the operator). The CA key stays
  # in .demo/ca (0700), apart from what the daemons are configured with
  # (.demo/tls, where only the CA's certificate goes), as it would stay off
  # a real cluster's nodes.
  if [[ ! -f $demo/tls/ca.pem || ! -f $demo/ca/ca-key.pem ]]; then
    rm -rf "$demo/tls" "$demo/ca"
    mkdir -m 0700 "$demo/ca"
    bin/dhctl tls ca create --dir "$demo/ca" --name "dhvisor demo CA" >/dev/null
    mkdir -m 0750 "$demo/tls"
    cp -p "$demo/ca/ca.pem" "$demo/tls/ca.pem"
    bin/dhctl tls cert create --agent --name demo --ca-dir "$demo/ca" --dir "$demo/tls" >/dev/null
    bin/dhctl tls cert create --coordinator --name coord --ca-dir "$demo/ca" --dir "$demo/tls" >/dev/null
    bin/dhctl tls cert create --operator --name operator --ca-dir "$demo/ca" --dir "$demo/tls" >/dev/null
  fi
  # The stand-ins play the JVMs: each listens on its service's ports from
  # roles/services.yaml. Services run as the demo user instead of irisadmin,
  # dbquery and dbmerge, and log under .demo/logs instead of /var/log/deephaven.
  cat >"$demo/agent.yaml" <<YAML
node: demo
roles: [single-node]
state_dir: state
socket: agent.sock
log_root: logs
api: {listen: 127.0.0.1:8130}
tls: {ca: tls/ca.pem, cert: tls/agent-demo.pem, key: tls/agent-demo-key.pem}
gossip: {bind: 127.0.0.1:7946}
vars:
  standin: $root/bin/dh-standin
defaults:
  user: ""
  command: ['{{var "standin"}}', '--name={{.Name}}', '--ports={{.Ports}}', '--app-log={{.LogDir}}', '--record={{.LogRoot}}/starts.log']
# The stand-ins speak plain HTTP where Deephaven's services speak TLS, so
# Envoy reaches every routed service without it.
services:
  configuration_server: {envoy: {tls: false}}
  authentication_server: {envoy: {tls: false}}
  db_acl_write_server: {envoy: {tls: false}}
  iris_controller: {envoy: {tls: false}}
  db_query_server: {envoy: {tls: false}}
  db_merge_server: {envoy: {tls: false}}
  web_api_service: {envoy: {tls: false}}
YAML
  cat >"$demo/coordinator.yaml" <<YAML
node: coord
data_dir: coordinator
api: {listen: 127.0.0.1:8125}
raft:
  listen: 127.0.0.1:8126
  bootstrap: [{id: coord, addr: "127.0.0.1:8126"}]
gossip: {bind: 127.0.0.1:7947, seeds: ["127.0.0.1:7946"]}
tls: {ca: tls/ca.pem, cert: tls/coordinator-coord.pem, key: tls/coordinator-coord-key.pem}
operations: {min_healthy_time: 2s}
envoy:
  xds: {listen: 127.0.0.1:8127}
YAML
  cat >"$demo/dhctl.yaml" <<YAML
coordinators: [127.0.0.1:8125]
tls: {ca: $demo/tls/ca.pem, cert: $demo/tls/operator-operator.pem, key: $demo/tls/operator-operator-key.pem}
YAML
  bin/dhctl validate "$demo/agent.yaml" >/dev/null
  setsid bin/dhagent --config "$demo/agent.yaml" >>"$demo/dhagent.log" 2>&1 < /dev/null &
  echo $! >"$demo/dhagent.pid"
  setsid bin/dhcoord --config "$demo/coordinator.yaml" >>"$demo/dhcoord.log" 2>&1 < /dev/null &
  echo $! >"$demo/dhcoord.pid"
  for _ in $(seq 50); do [[ -S $demo/agent.sock ]] && break; sleep 0.1; done
  echo "dhagent (pid $(cat "$demo/dhagent.pid"), log .demo/dhagent.log) and dhcoord (pid $(cat "$demo/dhcoord.pid"), log .demo/dhcoord.log) started; waiting for services..."
  bin/dhctl --socket "$demo/agent.sock" up --local --block --timeout 60s >/dev/null || true
  # The coordinator elects itself and learns the node over gossip; give it a moment.
  for _ in $(seq 100); do bin/dhctl coordinator peers 2>/dev/null | grep -q ' leader$' && bin/dhctl status >/dev/null 2>&1 && break; sleep 0.1; done
fi
echo
bin/dhctl --socket "$demo/agent.sock" status || true
cat <<EOT

Try:  export DHVISOR_SOCKET=$demo/agent.sock DHCTL_CONFIG=$demo/dhctl.yaml
      kill -9 \$(bin/dhctl status --local --json | grep -m1 '"pid"' | tr -dc 0-9); bin/dhctl status
      bin/dhctl restart all --dry-run        # the plan: a walk of the dependency graph
      bin/dhctl restart all                  # through the coordinator, health-gated, live progress
      bin/dhctl ops list; bin/dhctl audit; bin/dhctl coordinator peers
      bin/dhctl down; bin/dhctl up
Stop: make demo-stop
EOT
