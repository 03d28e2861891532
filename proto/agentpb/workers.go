package agentpb

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Worker registration limits.
const (
	DefaultWorkerLease = 30 * time.Second
	MinWorkerLease     = time.Second
	MaxWorkerLease     = 10 * time.Minute
	MaxWorkersPerSet   = 20000
	// MaxWorkersPerNode bounds the sets of all a node's dispatchers
	// together: what one node can make every Envoy route.
	MaxWorkersPerNode = 40000
)

// WorkerID is how the coordinators name a dispatcher's worker in Envoy
// (its cluster, its /worker/<id>/ path): the name is the dispatcher's
// choice, so it is scoped to that dispatcher and node, and no dispatcher
// can take a name another one uses. Neither part can hold a ':'.
func WorkerID(name, dispatcher, node string) string {
	return name + ":" + dispatcher + ":" + node
}

// A worker or dispatcher name ends up in Envoy cluster names and URL paths.
var workerName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// Normalize checks a registration, fills in its defaults (lease, envoy
// prefix /worker/<WorkerID>, protocol http2) and sorts the workers by name,
// the order the coordinators store them in. It needs the node. Errors name
// the field as sent, e.g. "workers[2].port: 0 is not a port (1-65535)".
func (r *RegisterWorkersRequest) Normalize() error {
	if !workerName.MatchString(r.Dispatcher) {
		return fmt.Errorf("dispatcher: %q is not a service name (e.g. db_query_server)", r.Dispatcher)
	}
	if !workerName.MatchString(r.Node) {
		return fmt.Errorf("node: %q is not a node name (letters, digits, _ . -)", r.Node)
	}
	switch ttl := time.Duration(r.LeaseTtlMs) * time.Millisecond; {
	case r.LeaseTtlMs == 0:
		r.LeaseTtlMs = DefaultWorkerLease.Milliseconds()
	case ttl < MinWorkerLease || ttl > MaxWorkerLease:
		return fmt.Errorf("lease_ttl_ms: %d is outside %d-%d", r.LeaseTtlMs, MinWorkerLease.Milliseconds(), MaxWorkerLease.Milliseconds())
	}
	if len(r.Workers) > MaxWorkersPerSet {
		return fmt.Errorf("workers: %d in one set; at most %d", len(r.Workers), MaxWorkersPerSet)
	}
	names := map[string]int{}
	prefixes := map[string]int{}
	for i, w := range r.Workers {
		field := fmt.Sprintf("workers[%d]", i)
		if !workerName.MatchString(w.Name) {
			return fmt.Errorf("%s.name: %q is not a worker name (letters, digits, _ . -)", field, w.Name)
		}
		if j, dup := names[w.Name]; dup {
			return fmt.Errorf("%s.name: %q is also workers[%d]", field, w.Name, j)
		}
		names[w.Name] = i
		if w.Port < 1 || w.Port > 65535 {
			return fmt.Errorf("%s.port: %d is not a port (1-65535)", field, w.Port)
		}
		if w.Host != "" && net.ParseIP(w.Host) == nil && !validHostname(w.Host) {
			return fmt.Errorf("%s.host: %q is neither an IP address nor a host name", field, w.Host)
		}
		if w.EnvoyPrefix == "" {
			w.EnvoyPrefix = "/worker/" + WorkerID(w.Name, r.Dispatcher, r.Node)
		}
		if !strings.HasPrefix(w.EnvoyPrefix, "/") || strings.ContainsAny(w.EnvoyPrefix, " \t\r\n") {
			return fmt.Errorf("%s.envoy_prefix: %q must start with / and hold no spaces", field, w.EnvoyPrefix)
		}
		if j, dup := prefixes[w.EnvoyPrefix]; dup {
			return fmt.Errorf("%s.envoy_prefix: %q is also workers[%d]'s", field, w.EnvoyPrefix, j)
		}
		prefixes[w.EnvoyPrefix] = i
		switch w.Protocol {
		case "":
			w.Protocol = "http2"
		case "http2", "http1":
		default:
			return fmt.Errorf("%s.protocol: %q is not http2 or http1", field, w.Protocol)
		}
	}
	slices.SortFunc(r.Workers, func(a, b *Worker) int { return strings.Compare(a.Name, b.Name) })
	return nil
}

var hostLabel = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if !hostLabel.MatchString(l) {
			return false
		}
	}
	return true
}
