package upstream

import (
	"context"
	"fmt"
	"sync"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Subscription subscribes to the configuration server's clusters (every
// one) and its route configuration, as Envoy on Deephaven's bootstrap
// does: CDS and RDS each on its own stream, or both over ADS. Each response
// is acknowledged with its version and nonce, or refused (NACK) with the
// version accepted before and why, as the xDS protocol says.
type Subscription struct {
	Conn        grpc.ClientConnInterface
	ADS         bool
	RouteConfig string
	Node        *core.Node
}

// Event is what a subscription reports.
type Event struct {
	// Resources are the clusters and routes after an accepted response,
	// once both have come; read only (each response makes new maps).
	Resources *Resources
	// Versions are the version_info of the clusters and routes accepted.
	Versions string
	// Refused is why a response was refused; what was accepted before
	// stays.
	Refused error
}

type xdsStream interface {
	Send(*discovery.DiscoveryRequest) error
	Recv() (*discovery.DiscoveryResponse, error)
}

// typeState is one resource type's subscription.
type typeState struct {
	typeURL string
	names   []string // none: every resource (wildcard)
	stream  xdsStream
	version string // the last version accepted
	got     bool   // a response was accepted
}

type received struct {
	ts   *typeState
	resp *discovery.DiscoveryResponse
	err  error
}

// Run subscribes and sends what it is sent on out until ctx ends or a
// stream fails; it returns why.
func (s *Subscription) Run(ctx context.Context, out chan<- Event) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	cds := &typeState{typeURL: resource.ClusterType}
	rds := &typeState{typeURL: resource.RouteType, names: []string{s.RouteConfig}}
	var streams []xdsStream
	if s.ADS {
		st, err := discovery.NewAggregatedDiscoveryServiceClient(s.Conn).StreamAggregatedResources(ctx)
		if err != nil {
			return fmt.Errorf("ADS stream: %w", err)
		}
		cds.stream, rds.stream = st, st
		streams = []xdsStream{st}
	} else {
		c, err := clusterservice.NewClusterDiscoveryServiceClient(s.Conn).StreamClusters(ctx)
		if err != nil {
			return fmt.Errorf("CDS stream: %w", err)
		}
		r, err := routeservice.NewRouteDiscoveryServiceClient(s.Conn).StreamRoutes(ctx)
		if err != nil {
			return fmt.Errorf("RDS stream: %w", err)
		}
		cds.stream, rds.stream = c, r
		streams = []xdsStream{c, r}
	}
	types := []*typeState{cds, rds}
	in := make(chan received)
	for _, st := range streams {
		// On a stream of one type, responses are of that type whatever
		// they say; on ADS the type URL tells them apart.
		var only *typeState
		if !s.ADS {
			only = cds
			if st == rds.stream {
				only = rds
			}
		}
		wg.Go(func() {
			for {
				resp, err := st.Recv()
				ts := only
				if ts == nil && resp != nil {
					ts = typeOf(types, resp.GetTypeUrl())
				}
				select {
				case in <- received{ts: ts, resp: resp, err: err}:
				case <-ctx.Done():
					return
				}
				if err != nil {
					return
				}
			}
		})
	}
	for _, ts := range types {
		if err := s.send(ts, "", nil); err != nil {
			return err
		}
	}
	res := &Resources{}
	for {
		var r received
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r = <-in:
		}
		if r.err != nil {
			return fmt.Errorf("xDS stream: %w", r.err)
		}
		if r.ts == nil {
			// A type never asked for: nothing to acknowledge it on.
			continue
		}
		var ev Event
		next, err := decode(r.ts.typeURL, r.resp)
		if err == nil && r.resp.GetTypeUrl() != r.ts.typeURL {
			err = fmt.Errorf("response of type %q on the %s stream", r.resp.GetTypeUrl(), r.ts.typeURL)
		}
		if err != nil {
			ev.Refused = fmt.Errorf("%s version %q refused: %w", shortType(r.ts.typeURL), r.resp.GetVersionInfo(), err)
			err = s.send(r.ts, r.resp.GetNonce(), err)
		} else {
			r.ts.version, r.ts.got = r.resp.GetVersionInfo(), true
			err = s.send(r.ts, r.resp.GetNonce(), nil)
			if r.ts == cds {
				res = &Resources{Clusters: next.Clusters, Routes: res.Routes}
			} else {
				res = &Resources{Clusters: res.Clusters, Routes: next.Routes}
			}
			if cds.got && rds.got {
				ev.Resources = res
				ev.Versions = fmt.Sprintf("clusters %s, routes %s", cds.version, rds.version)
			}
		}
		if err != nil {
			return err
		}
		if ev.Resources == nil && ev.Refused == nil {
			continue
		}
		select {
		case out <- ev:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func typeOf(types []*typeState, url string) *typeState {
	for _, ts := range types {
		if ts.typeURL == url {
			return ts
		}
	}
	return nil
}

// send asks for ts's resources: the first request (no nonce), an ACK, or
// with refused a NACK, which carries the version accepted before.
func (s *Subscription) send(ts *typeState, nonce string, refused error) error {
	req := &discovery.DiscoveryRequest{
		VersionInfo: ts.version, Node: s.Node, ResourceNames: ts.names, TypeUrl: ts.typeURL, ResponseNonce: nonce,
	}
	if refused != nil {
		req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: refused.Error()}
	}
	// Envoy sends its node only on a stream's first request.
	if nonce != "" {
		req.Node = nil
	}
	if err := ts.stream.Send(req); err != nil {
		return fmt.Errorf("%s request: %w", shortType(ts.typeURL), err)
	}
	return nil
}

func shortType(url string) string {
	switch url {
	case resource.ClusterType:
		return "CDS"
	case resource.RouteType:
		return "RDS"
	}
	return url
}

// decode reads a response of type typeURL, as Envoy would accept it: every
// resource of that type, valid, named once.
func decode(typeURL string, resp *discovery.DiscoveryResponse) (Resources, error) {
	r := Resources{Clusters: map[string]*cluster.Cluster{}, Routes: map[string]*route.RouteConfiguration{}}
	for i, a := range resp.GetResources() {
		var m interface {
			proto.Message
			ValidateAll() error
			GetName() string
		}
		switch typeURL {
		case resource.ClusterType:
			m = &cluster.Cluster{}
		case resource.RouteType:
			m = &route.RouteConfiguration{}
		default:
			return r, fmt.Errorf("unexpected type %q", typeURL)
		}
		if err := anypb.UnmarshalTo(a, m, proto.UnmarshalOptions{}); err != nil {
			return r, fmt.Errorf("resource %d: %w", i, err)
		}
		if err := m.ValidateAll(); err != nil {
			return r, fmt.Errorf("resource %d (%s): %w", i, m.GetName(), err)
		}
		name := m.GetName()
		switch c := m.(type) {
		case *cluster.Cluster:
			if r.Clusters[name] != nil {
				return r, fmt.Errorf("cluster %q sent twice", name)
			}
			r.Clusters[name] = c
		case *route.RouteConfiguration:
			if r.Routes[name] != nil {
				return r, fmt.Errorf("route configuration %q sent twice", name)
			}
			r.Routes[name] = c
		}
	}
	return r, nil
}
