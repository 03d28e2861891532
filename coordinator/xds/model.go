// Package xds serves Envoy's discovery services (CDS, EDS, RDS, LDS, over
// ADS or separate streams, state-of-the-world and delta) from one replica's
// view of the cluster: the Deephaven services' healthy instances, the query
// workers the dispatchers registered, and the site's extra routes.
package xds

import "github.com/dhvisor/dhvisor/internal/config"

// Model is everything the resources are built from. Building is a pure
// function of it, so two replicas with the same model serve the same
// versions.
type Model struct {
	Services    []Service
	Workers     []Worker
	ExtraRoutes []config.ExtraRoute
}

// Service is a Deephaven service Envoy routes to: one EDS cluster whose
// endpoints are its healthy instances.
type Service struct {
	Name      string   // the service name, e.g. web_api_service
	TLS       bool     // Envoy speaks TLS to it
	HTTP2     bool     // gRPC: HTTP/2 upstream; else HTTP/1.1 (websocket upgrades)
	Routes    []string // path prefixes routed to it
	Default   bool     // it takes what no other route takes
	Endpoints []Endpoint
}

// Endpoint is one healthy instance of a service.
type Endpoint struct {
	Node string
	Host string
	Port uint32
}

// Worker is a query worker a dispatcher registered.
type Worker struct {
	Name       string // unique in the cluster (a dispatcher's are scoped: agentpb.WorkerID); routed by /worker/<name>/
	Prefix     string // the envoy-prefix header value clients send for it
	Host       string
	Port       uint32
	Kind       string
	Nonce      string
	Node       string // the dispatcher's node
	Dispatcher string // the dispatcher's service name
	TLS        bool
	HTTP2      bool
}
