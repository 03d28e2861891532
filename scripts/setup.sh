#!/usr/bin/env bash
# Installs what building and testing dhvisor needs on a fresh Debian 12
# machine (as root): Go tools from the Go module proxy, and Debian packages
# (monit for the benchmark, protoc for `make proto`, iproute2 for the
# network-namespace cluster tests, docker.io for the Envoy container tests),
# and starts the Docker engine if none answers. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH)/bin"

command -v go >/dev/null || { echo "setup: Go 1.26 is required (https://go.dev/dl/)"; exit 1; }

need_apt=()
command -v monit >/dev/null || need_apt+=(monit)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v ip >/dev/null || need_apt+=(iproute2)   # network namespaces for the cluster tests
command -v tc >/dev/null || need_apt+=(iproute2)
command -v iptables >/dev/null || need_apt+=(iptables)   # packet loss in the gossip soak (no netem in some kernels)
command -v dockerd >/dev/null || need_apt+=(docker.io)   # the Envoy container's tests and benchmark
command -v debootstrap >/dev/null || need_apt+=(debootstrap)  # the root file system of the systemd container (package tests)
command -v rpm >/dev/null || need_apt+=(rpm)             # rpm -qp on the built .rpm
if ((${#need_apt[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(printf '%s\n' "${need_apt[@]}" | sort -u) >/dev/null
  else
    echo "setup: please install: ${need_apt[*]} (apt-get install ${need_apt[*]})"
  fi
fi

# The Docker engine, as TESTBED.md starts it: no bridge and no iptables
# rules (containers use the host's network). Left alone when one answers.
if command -v dockerd >/dev/null && ! docker version >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then
    mkdir -p /var/log/dhvisor
    setsid dockerd --iptables=false --bridge=none >/var/log/dhvisor/dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
    docker version >/dev/null 2>&1 || { echo "setup: dockerd did not start (see /var/log/dhvisor/dockerd.log)"; exit 1; }
  else
    echo "setup: please start the Docker engine (dockerd --iptables=false --bridge=none)"
  fi
fi

gobin=$(go env GOPATH)/bin
[[ -x $gobin/staticcheck ]] || go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
[[ -x $gobin/protoc-gen-go ]] || go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
[[ -x $gobin/protoc-gen-go-grpc ]] || go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
[[ -x $gobin/nfpm ]] || go install github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.48.0   # make packages
go mod download

# The image with a real systemd that the systemd runtime's and the
# packages' tests run (debootstrap, once per machine, about a minute).
if [[ $(id -u) -eq 0 ]] && docker version >/dev/null 2>&1; then
  scripts/testbed/systemd-image.sh >/dev/null
fi
echo "setup: done"
