// Package upstream imports the query workers Deephaven's configuration
// server serves on its own xDS. Deephaven's dispatchers send their workers
// to the configuration server, which makes for each one a cluster and a
// route on the envoy-prefix header (and, for most, one on the path
// /worker/<id>/); clients learn the prefix from the controller, so it is
// kept byte for byte. The leading coordinator subscribes to CDS and RDS as
// Envoy does (Subscribe), reads the workers from what it is sent
// (Extract), and stores them in raft as one set that each update replaces
// (Importer), so that every replica routes them like registered workers.
package upstream

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"

	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// PrefixHeader is the header Core+ clients name their worker with.
const PrefixHeader = "envoy-prefix"

// maxPrefix bounds an imported prefix: it becomes a header matcher on
// every replica.
const maxPrefix = 1024

// httpOptionsKey is where a cluster's upstream HTTP protocol is set.
const httpOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// Resources are the clusters and route configurations last accepted.
type Resources struct {
	Clusters map[string]*cluster.Cluster
	Routes   map[string]*route.RouteConfiguration
}

// workerName is the registration API's rule (agentpb): names end up in
// Envoy cluster names and URL paths.
var workerName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// Extract reads the workers from r: every route that matches the
// envoy-prefix header on an exact value, with the cluster it points to and
// that cluster's first endpoint (host as the cluster names it; a host name
// is resolved later). A worker's name is the <id> of its path route
// /worker/<id>/ when there is one, else of its prefix when that is
// /worker/<id>, else made from its cluster's name. Routes that cannot be
// imported are listed in skipped with why, never an error: one odd route
// must not take every worker away. Workers come sorted by name.
func Extract(r Resources) (workers []*agentpb.Worker, skipped []string) {
	type headerRoute struct {
		prefix, cluster, where string
	}
	var headers []headerRoute
	paths := map[string][]string{} // cluster -> path prefixes routed to it
	seen := map[string]string{}    // prefix -> where its first route is
	for _, rcName := range slices.Sorted(maps.Keys(r.Routes)) {
		for _, vh := range r.Routes[rcName].GetVirtualHosts() {
			for i, rt := range vh.GetRoutes() {
				where := fmt.Sprintf("%s/%s route %d", rcName, vh.GetName(), i)
				clusterName := rt.GetRoute().GetCluster()
				hm := prefixMatcher(rt.GetMatch().GetHeaders())
				if hm == nil {
					if len(rt.GetMatch().GetHeaders()) == 0 && clusterName != "" && rt.GetMatch().GetPrefix() != "" {
						paths[clusterName] = append(paths[clusterName], rt.GetMatch().GetPrefix())
					}
					continue
				}
				prefix, why := exactValue(hm)
				switch {
				case why != "":
				case clusterName == "":
					why = "does not route to one cluster"
				case seen[prefix] != "":
					why = "shadowed by " + seen[prefix] + ", which Envoy matches first"
				}
				if why != "" {
					skipped = append(skipped, fmt.Sprintf("%s (%s %q): %s", where, PrefixHeader, prefix, why))
					continue
				}
				seen[prefix] = where
				headers = append(headers, headerRoute{prefix: prefix, cluster: clusterName, where: where})
			}
		}
	}
	names := map[string]bool{}
	for _, h := range headers {
		w, why := worker(r.Clusters[h.cluster], h.cluster)
		if why != "" {
			skipped = append(skipped, fmt.Sprintf("%s (%s %q): %s", h.where, PrefixHeader, h.prefix, why))
			continue
		}
		w.EnvoyPrefix = h.prefix
		w.Name = nameOf(h.prefix, h.cluster, paths[h.cluster])
		if names[w.Name] {
			w.Name = hashName(h.prefix)
		}
		names[w.Name] = true
		workers = append(workers, w)
	}
	slices.SortFunc(workers, func(a, b *agentpb.Worker) int { return strings.Compare(a.Name, b.Name) })
	return workers, skipped
}

// prefixMatcher is the route's matcher of the envoy-prefix header, if any
// (header names are case-insensitive).
func prefixMatcher(hs []*route.HeaderMatcher) *route.HeaderMatcher {
	for _, h := range hs {
		if strings.EqualFold(h.GetName(), PrefixHeader) {
			return h
		}
	}
	return nil
}

// exactValue is the prefix hm matches, or why it names no one worker.
func exactValue(hm *route.HeaderMatcher) (prefix, why string) {
	switch {
	case hm.GetInvertMatch():
		return "", "an inverted match names no worker"
	case legacyExact(hm) != "":
		prefix = legacyExact(hm)
	case hm.GetStringMatch().GetExact() != "":
		prefix = hm.GetStringMatch().GetExact()
	default:
		return "", "matches on something other than an exact value"
	}
	if len(prefix) > maxPrefix {
		return prefix[:32] + "...", fmt.Sprintf("longer than %d bytes", maxPrefix)
	}
	for _, c := range []byte(prefix) {
		if c < 0x20 || c == 0x7f {
			return prefix, "holds a control character, which no HTTP header value can"
		}
	}
	return prefix, ""
}

// legacyExact is the deprecated exact_match, which older control planes
// still send.
func legacyExact(hm *route.HeaderMatcher) string {
	//lint:ignore SA1019 read, never written
	return hm.GetExactMatch()
}

// worker is what cluster c says of its worker: endpoint, TLS, protocol.
func worker(c *cluster.Cluster, name string) (*agentpb.Worker, string) {
	if c == nil {
		return nil, "its cluster " + name + " is not among the clusters CDS sent"
	}
	var sa *core.SocketAddress
	for _, loc := range c.GetLoadAssignment().GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			if s := lb.GetEndpoint().GetAddress().GetSocketAddress(); s != nil && lb.GetHealthStatus() != core.HealthStatus_UNHEALTHY && lb.GetHealthStatus() != core.HealthStatus_DRAINING {
				sa = s
				break
			}
		}
		if sa != nil {
			break
		}
	}
	switch {
	case sa == nil && c.GetType() == cluster.Cluster_EDS:
		return nil, "its cluster " + name + " gets its endpoints from EDS, which the configuration server does not serve"
	case sa == nil:
		return nil, "its cluster " + name + " has no endpoint"
	case sa.GetPortValue() < 1 || sa.GetPortValue() > 65535:
		return nil, fmt.Sprintf("its cluster %s's endpoint %s has no port", name, sa.GetAddress())
	case sa.GetAddress() == "":
		return nil, "its cluster " + name + "'s endpoint has no address"
	}
	w := &agentpb.Worker{Host: sa.GetAddress(), Port: int32(sa.GetPortValue()), Tls: isTLS(c.GetTransportSocket()), Protocol: "http1"}
	if http2(c) {
		w.Protocol = "http2"
	}
	return w, ""
}

func isTLS(ts *core.TransportSocket) bool {
	if ts == nil {
		return false
	}
	return ts.GetName() == wellknown.TransportSocketTLS || ts.GetTypedConfig().MessageIs(&tlsv3.UpstreamTlsContext{})
}

// http2 says whether Envoy speaks HTTP/2 to the cluster: gRPC, which is
// what Core+ workers serve. A cluster that follows the downstream protocol
// or ALPN counts when it allows HTTP/2 at all: its gRPC clients get it.
func http2(c *cluster.Cluster) bool {
	//lint:ignore SA1019 older control planes still set http2_protocol_options on the cluster
	if c.GetHttp2ProtocolOptions() != nil {
		return true
	}
	a := c.GetTypedExtensionProtocolOptions()[httpOptionsKey]
	if a == nil {
		return false
	}
	var o upstreamhttp.HttpProtocolOptions
	if a.UnmarshalTo(&o) != nil {
		return false
	}
	return o.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil ||
		o.GetUseDownstreamProtocolConfig().GetHttp2ProtocolOptions() != nil ||
		o.GetAutoConfig() != nil
}

// nameOf is the worker's name (see Extract).
func nameOf(prefix, clusterName string, paths []string) string {
	for _, p := range paths {
		if id, ok := workerID(p); ok {
			return id
		}
	}
	if id, ok := workerID(prefix); ok {
		return id
	}
	if workerName.MatchString(clusterName) {
		return clusterName
	}
	return hashName(prefix)
}

// workerID is <id> of /worker/<id> or /worker/<id>/.
func workerID(p string) (string, bool) {
	id, ok := strings.CutPrefix(strings.TrimSuffix(p, "/"), "/worker/")
	return id, ok && workerName.MatchString(id)
}

func hashName(prefix string) string {
	sum := sha256.Sum256([]byte(prefix))
	return "cs-" + hex.EncodeToString(sum[:8])
}
