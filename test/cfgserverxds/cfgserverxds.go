// Package cfgserverxds is a test fixture: an xDS server that serves what
// Deephaven's configuration server is documented to serve Envoy (its
// Envoy guide; io.deephaven.envoysupport.xds): CDS and RDS only, each on
// its own stream (no ADS, EDS or LDS: the listener is static in
// Deephaven's bootstrap); every service and worker a cluster named by a
// hash of its hosts and ports, with its endpoints inline; one route
// configuration, rds_config, holding for each worker a route on the
// envoy-prefix header and one on the path /worker/<id>/, the gRPC services
// by path, and everything else to the web API. The coordinator's import of
// the workers is tested against it.
package cfgserverxds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// RouteConfigName is the route configuration of Deephaven's bootstrap.
const RouteConfigName = "rds_config"

// Worker is one query worker a dispatcher reported.
type Worker struct {
	ID     string // routed by /worker/<ID>/; empty: no path route
	Prefix string // the envoy-prefix header value the controller gives clients
	Host   string
	Port   int
	TLS    bool
	// HTTP1 makes its cluster HTTP/1.1; Core+ workers speak gRPC (HTTP/2).
	HTTP1 bool
}

// Service is a Deephaven service routed by path prefixes.
type Service struct {
	Name     string
	Host     string
	Port     int
	Prefixes []string // none: the default route (the web API)
	HTTP2    bool
}

// Request is a request the server received, for tests of the protocol.
type Request struct {
	TypeURL, Version, Nonce, Error string
	Node                           *core.Node
	Names                          []string
}

// Server is a running fake configuration server.
type Server struct {
	lis    net.Listener
	gs     *grpc.Server
	cache  cache.SnapshotCache
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	version  int
	services []Service
	requests []Request
}

// oneGroup serves every node the same snapshot, as the configuration
// server serves every Envoy the same routes.
type oneGroup struct{}

func (oneGroup) ID(*core.Node) string { return "deephaven" }

// Start serves on addr (host:port; port 0 picks one) with the services
// given and no workers yet.
func Start(addr string, services ...Service) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{lis: lis, cache: cache.NewSnapshotCache(false, oneGroup{}, nil), cancel: cancel, done: make(chan struct{}), services: services}
	srv := server.NewServer(ctx, s.cache, server.CallbackFuncs{StreamRequestFunc: func(_ int64, r *discovery.DiscoveryRequest) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.requests = append(s.requests, Request{TypeURL: r.GetTypeUrl(), Version: r.GetVersionInfo(), Nonce: r.GetResponseNonce(),
			Error: r.GetErrorDetail().GetMessage(), Node: r.GetNode(), Names: r.GetResourceNames()})
		return nil
	}})
	s.gs = grpc.NewServer()
	clusterservice.RegisterClusterDiscoveryServiceServer(s.gs, srv)
	routeservice.RegisterRouteDiscoveryServiceServer(s.gs, srv)
	if err := s.Set(nil); err != nil {
		cancel()
		lis.Close()
		return nil, err
	}
	go func() {
		defer close(s.done)
		_ = s.gs.Serve(lis)
	}()
	return s, nil
}

// Addr is the address it serves on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Stop ends every stream and stops serving: the configuration server down.
func (s *Server) Stop() {
	s.gs.Stop()
	s.cancel()
	<-s.done
}

// Requests are the requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Set makes ws the workers served: a new snapshot, pushed to every stream,
// as a dispatcher's new worker snapshot makes the configuration server do.
func (s *Server) Set(ws []Worker) error {
	s.mu.Lock()
	services := s.services
	s.mu.Unlock()
	var clusters, routes []types.Resource
	vh := &route.VirtualHost{Name: "deephaven", Domains: []string{"*"}}
	for _, w := range ws {
		c := staticCluster(clusterName(w.Host, w.Port), w.Host, w.Port, w.TLS, !w.HTTP1)
		clusters = append(clusters, c)
		vh.Routes = append(vh.Routes, headerRoute(w.Prefix, c.Name))
	}
	for _, w := range ws {
		if w.ID != "" {
			vh.Routes = append(vh.Routes, prefixRoute("/worker/"+w.ID+"/", clusterName(w.Host, w.Port), "/"))
		}
	}
	var def *route.Route
	for _, svc := range services {
		c := staticCluster(clusterName(svc.Host, svc.Port), svc.Host, svc.Port, false, svc.HTTP2)
		clusters = append(clusters, c)
		for _, p := range svc.Prefixes {
			vh.Routes = append(vh.Routes, prefixRoute(p, c.Name, ""))
		}
		if len(svc.Prefixes) == 0 {
			def = prefixRoute("/", c.Name, "")
		}
	}
	if def != nil {
		vh.Routes = append(vh.Routes, def)
	}
	routes = append(routes, &route.RouteConfiguration{Name: RouteConfigName, VirtualHosts: []*route.VirtualHost{vh}})
	for _, r := range append(clusters, routes...) {
		if err := r.(interface{ ValidateAll() error }).ValidateAll(); err != nil {
			return err
		}
	}
	return s.SetResources(clusters, routes)
}

// SetResources serves these resources as they are, valid or not: a test
// of what the client refuses.
func (s *Server) SetResources(clusters, routes []types.Resource) error {
	s.mu.Lock()
	s.version++
	v := strconv.Itoa(s.version)
	s.mu.Unlock()
	snap, err := cache.NewSnapshot(v, map[resource.Type][]types.Resource{resource.ClusterType: clusters, resource.RouteType: routes})
	if err != nil {
		return err
	}
	return s.cache.SetSnapshot(context.Background(), oneGroup{}.ID(nil), snap)
}

// clusterName names a cluster by a hash of where it points, as
// AbstractEnvoyDiscoveryService.clusterPrefix does.
func clusterName(host string, port int) string {
	sum := sha256.Sum256([]byte(net.JoinHostPort(host, strconv.Itoa(port))))
	return "dh_" + hex.EncodeToString(sum[:10])
}

func staticCluster(name, host string, port int, tls, http2 bool) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 name,
		ConnectTimeout:       durationpb.New(5 * time.Second),
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS},
		LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{
			LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
				Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
					Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(port)},
				}}},
			}}}},
		}}},
	}
	if http2 {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&upstreamhttp.HttpProtocolOptions{
			UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}},
			}},
		})}
	}
	if tls {
		c.TransportSocket = &core.TransportSocket{Name: wellknown.TransportSocketTLS, ConfigType: &core.TransportSocket_TypedConfig{
			TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{Sni: host}),
		}}
	}
	return c
}

func headerRoute(prefix, clusterName string) *route.Route {
	r := prefixRoute("/", clusterName, "")
	r.Match.Headers = []*route.HeaderMatcher{{Name: "envoy-prefix", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{
		StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: prefix}},
	}}}
	return r
}

func prefixRoute(prefix, clusterName, rewrite string) *route.Route {
	return &route.Route{
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: prefix}},
		Action: &route.Route_Route{Route: &route.RouteAction{
			ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName}, PrefixRewrite: rewrite,
			Timeout: durationpb.New(0),
		}},
	}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("cfgserverxds: %v", err))
	}
	return a
}
