package upstream

import (
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
)

func staticCluster(name, host string, port uint32) *cluster.Cluster {
	return &cluster.Cluster{
		Name: name, ConnectTimeout: durationpb.New(time.Second),
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS},
		LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{
			LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
				Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}}},
			}}}},
		}}},
	}
}

func toCluster(path, clusterName string) *route.Route {
	return &route.Route{Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: path}},
		Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName}}}}
}

func onHeader(hm *route.HeaderMatcher, clusterName string) *route.Route {
	r := toCluster("/", clusterName)
	r.Match.Headers = []*route.HeaderMatcher{hm}
	return r
}

func exact(name, v string) *route.HeaderMatcher {
	return &route.HeaderMatcher{Name: name, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: v}}}}
}

func TestExtract(t *testing.T) {
	tlsCluster := staticCluster("c_tls", "10.0.0.3", 443)
	tlsCluster.TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls"}
	//lint:ignore SA1019 the form older control planes send
	tlsCluster.Http2ProtocolOptions = &core.Http2ProtocolOptions{}
	eds := &cluster.Cluster{Name: "c_eds", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS}}
	res := Resources{
		Clusters: map[string]*cluster.Cluster{
			"dh_1a2b": staticCluster("dh_1a2b", "query-1.example.com", 24001),
			"dh_3c4d": staticCluster("dh_3c4d", "10.0.0.2", 24002),
			"c_tls":   tlsCluster,
			"c_eds":   eds,
			"c_empty": {Name: "c_empty"},
			"c:odd":   staticCluster("c:odd", "10.0.0.4", 24004),
			"web":     staticCluster("web", "10.0.0.1", 8123),
		},
		Routes: map[string]*route.RouteConfiguration{"rds_config": {Name: "rds_config", VirtualHosts: []*route.VirtualHost{{Name: "vh", Routes: []*route.Route{
			// A Core+ worker: its header, and its path route whose id names it.
			onHeader(exact("envoy-prefix", "/worker/Core+ 1a2b "), "dh_1a2b"),
			// Named by its prefix; the header name in another case.
			onHeader(exact("Envoy-Prefix", "/worker/w2"), "dh_3c4d"),
			// Named by its cluster; TLS and HTTP/2 the old way.
			onHeader(exact("envoy-prefix", "opaque"), "c_tls"),
			// A cluster name that is no worker name: a hash.
			onHeader(exact("envoy-prefix", "odd"), "c:odd"),
			// Not importable, each for a reason.
			onHeader(exact("envoy-prefix", "/worker/w2"), "dh_3c4d"),
			onHeader(&route.HeaderMatcher{Name: "envoy-prefix", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: "/worker/"}}}}, "web"),
			onHeader(exact("envoy-prefix", "/worker/eds"), "c_eds"),
			onHeader(exact("envoy-prefix", "/worker/none"), "c_empty"),
			onHeader(exact("envoy-prefix", "/worker/gone"), "dh_gone"),
			onHeader(exact("envoy-prefix", "bad\nvalue"), "web"),
			{Match: &route.RouteMatch{Headers: []*route.HeaderMatcher{exact("envoy-prefix", "/weighted")}}, Action: &route.Route_Route{Route: &route.RouteAction{
				ClusterSpecifier: &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{}}}}},
			toCluster("/worker/core-1a2b/", "dh_1a2b"),
			toCluster("/", "web"),
		}}}}},
	}
	workers, skipped := Extract(res)
	want := []*agentpb.Worker{
		{Name: "c_tls", EnvoyPrefix: "opaque", Host: "10.0.0.3", Port: 443, Tls: true, Protocol: "http2"},
		{Name: "core-1a2b", EnvoyPrefix: "/worker/Core+ 1a2b ", Host: "query-1.example.com", Port: 24001, Protocol: "http1"},
		{Name: hashName("odd"), EnvoyPrefix: "odd", Host: "10.0.0.4", Port: 24004, Protocol: "http1"},
		{Name: "w2", EnvoyPrefix: "/worker/w2", Host: "10.0.0.2", Port: 24002, Protocol: "http1"},
	}
	if !slices.EqualFunc(workers, want, func(a, b *agentpb.Worker) bool { return proto.Equal(a, b) }) {
		t.Errorf("workers:\n%v\nwant\n%v", workers, want)
	}
	wantSkipped := []string{
		`route 4 (envoy-prefix "/worker/w2"): shadowed by rds_config/vh route 1`,
		`route 5 (envoy-prefix ""): matches on something other than an exact value`,
		`route 9 (envoy-prefix "bad\nvalue"): holds a control character`,
		`route 10 (envoy-prefix "/weighted"): does not route to one cluster`,
		`route 6 (envoy-prefix "/worker/eds"): its cluster c_eds gets its endpoints from EDS`,
		`route 7 (envoy-prefix "/worker/none"): its cluster c_empty has no endpoint`,
		`route 8 (envoy-prefix "/worker/gone"): its cluster dh_gone is not among the clusters CDS sent`,
	}
	if len(skipped) != len(wantSkipped) {
		t.Fatalf("skipped:\n%s", strings.Join(skipped, "\n"))
	}
	for i, w := range wantSkipped {
		if !strings.Contains(skipped[i], w) {
			t.Errorf("skipped[%d] = %q, want it to contain %q", i, skipped[i], w)
		}
	}
}
