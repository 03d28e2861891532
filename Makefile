# dhvisor — see README.md. `make demo` and `make test` are the two entry points.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/dhvisor/dhvisor/internal/version.Version=$(VERSION)
BINS    := bin/dhagent bin/dhcoord bin/dhctl bin/dh-standin
STATICCHECK ?= $(shell command -v staticcheck || echo $$(go env GOPATH)/bin/staticcheck)
# Envoy's types marshal with the code vtprotobuf generated for them
# (coordinator/xds): a quarter less CPU in a coordinator's xDS builds.
# Without the tag everything works, with reflection's marshalling.
export GOFLAGS := $(strip $(GOFLAGS) -tags=vtprotobuf)

# Packages: version from git (scripts/packaging/version.sh), nfpm from the
# Go proxy (scripts/setup.sh installs it).
PKG_VERSION    = $(shell scripts/packaging/version.sh)
PKG_MAINTAINER ?= dhvisor maintainers <dhvisor@deephaven.io>
NFPM ?= $(shell command -v nfpm || echo $$(go env GOPATH)/bin/nfpm)

.PHONY: all build demo demo-stop test lint unit e2e bench proto clean packages

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/dhagent ./cmd/dhagent
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/dhcoord ./cmd/dhcoord
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/dhctl ./cmd/dhctl
	$(GO) build -o bin/dh-standin ./test/standin

demo: build
	scripts/demo.sh

demo-stop:
	scripts/demo-stop.sh

# Every test: lint, unit tests with the race detector, end-to-end tests that
# start real processes.
test: lint build
	$(GO) test -race -count=1 -timeout 15m ./...

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(STATICCHECK) ./...

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 2s ./agent/... ./internal/... ./coordinator ./coordinator/xds
	$(GO) run ./scripts/bench/restart --samples 60
	$(GO) run ./scripts/bench/systemd --samples 60
	$(GO) run ./scripts/bench/gossip
	$(GO) run ./scripts/bench/coord
	$(GO) run ./scripts/bench/xds
	$(GO) run ./scripts/bench/envoy
	$(GO) run ./scripts/bench/upgrade

# dist/dhvisor_<version>_amd64.deb and dist/dhvisor-<version>.x86_64.rpm:
# static binaries, roles, systemd units, the default agent.yaml (a config
# file, kept on upgrade), dhctl's man pages and completions.
packages:
	rm -rf dist/build && mkdir -p dist/build
	v=$(PKG_VERSION); ld="-s -w -X github.com/dhvisor/dhvisor/internal/version.Version=$$v"; \
	for c in dhagent dhcoord dhctl; do CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$$ld" -o dist/build/$$c ./cmd/$$c || exit 1; done; \
	$(GO) run ./scripts/packaging/gendocs --out dist/build --version $$v && \
	rm -f dist/dhvisor_*_amd64.deb dist/dhvisor-*.x86_64.rpm && \
	DHVISOR_VERSION=$$v DHVISOR_MAINTAINER="$(PKG_MAINTAINER)" $(NFPM) pkg -f packaging/nfpm.yaml -p deb -t dist/dhvisor_$${v}_amd64.deb && \
	DHVISOR_VERSION=$$v DHVISOR_MAINTAINER="$(PKG_MAINTAINER)" $(NFPM) pkg -f packaging/nfpm.yaml -p rpm -t dist/dhvisor-$$v.x86_64.rpm

proto:
	PATH="$$PATH:$$(go env GOPATH)/bin" protoc -I proto --go_out=proto --go_opt=paths=source_relative \
	  --go-grpc_out=proto --go-grpc_opt=paths=source_relative proto/agentpb/agent.proto proto/coordpb/coord.proto proto/coordpb/extraroutes.proto

clean:
	rm -rf bin dist
