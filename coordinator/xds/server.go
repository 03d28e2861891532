package xds

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
)

// FlavourMetadataKey is the node metadata field ("ads" or "classic") that
// chooses a client's flavour, whatever its user agent.
const FlavourMetadataKey = "dhvisor_xds_flavour"

// FlavourOf is the flavour a node gets: the one its metadata asks for,
// else Classic for Envoy (Deephaven's bootstrap has no ADS) and ADS for
// everyone else (grpc-go accepts nothing but ADS).
func FlavourOf(n *core.Node) Flavour {
	switch f := Flavour(n.GetMetadata().GetFields()[FlavourMetadataKey].GetStringValue()); f {
	case ADS, Classic:
		return f
	}
	if n.GetUserAgentName() == "envoy" {
		return Classic
	}
	return ADS
}

// nodeHash keys the snapshot cache by flavour: every client of a flavour
// gets the same snapshot.
type nodeHash struct{}

func (nodeHash) ID(n *core.Node) string { return string(FlavourOf(n)) }

// Server serves the resources built from the last model it was given, to
// each client in its flavour, over ADS or a stream per type, state of the
// world or delta.
type Server struct {
	ctx   context.Context
	log   *slog.Logger
	cache cache.SnapshotCache
	xds   serverv3.Server
	nacks nackGuard

	mu    sync.Mutex // one Update at a time; guards b, model and built
	b     builder
	model Model
	built bool

	statusMu sync.RWMutex
	status   Status
	table    *table
}

// Status is what the server serves now.
type Status struct {
	// Versions are flavour → resource type URL → version. Equal models
	// give equal versions, on any replica.
	Versions  map[Flavour]map[string]string
	Built     time.Time     // when the last changed model was built
	BuildTime time.Duration // how long building them took
	Counts
	Rejected      uint64 // responses clients rejected (NACKs)
	LastRejection string // the last rejection's message
}

// NewServer is a server with nothing to serve until the first Update. Its
// streams end when ctx does. A nil log is slog's default.
func NewServer(ctx context.Context, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{ctx: ctx, log: log, nacks: nackGuard{log: log, last: map[int64]map[string]sent{}}}
	cl := cpLogger{log}
	s.cache = cache.NewSnapshotCache(false, nodeHash{}, cl)
	s.xds = serverv3.NewServer(ctx, s.cache, serverv3.CallbackFuncs{
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			s.nacks.request(id, req)
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			s.nacks.response(id, resp)
		},
		StreamClosedFunc: func(id int64, _ *core.Node) { s.nacks.closed(id) },
		StreamDeltaRequestFunc: func(_ int64, req *discovery.DeltaDiscoveryRequest) error {
			if req.GetErrorDetail() != nil {
				s.nacks.rejected(req.GetNode(), req.GetTypeUrl(), req.GetErrorDetail().GetMessage())
			}
			return nil
		},
	}, sotw.WithLogger(cl))
	return s
}

// Register adds the discovery services to g: ADS and one per type, each
// with its state-of-the-world and delta streams.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, s.xds)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, s.xds)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, s.xds)
	routeservice.RegisterRouteDiscoveryServiceServer(g, s.xds)
}

// Update serves m from now on. An unchanged model costs a comparison; a
// refused one (an error) leaves the previous resources served.
func (s *Server) Update(m Model) error {
	c := canonical(m)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.built && equal(c, s.model) {
		return nil
	}
	start := time.Now()
	out, err := s.b.build(c)
	if err != nil {
		return err
	}
	took := time.Since(start)
	for _, f := range flavours {
		if err := s.cache.SetSnapshot(s.ctx, string(f), out.served[f]); err != nil {
			return fmt.Errorf("serve the %s snapshot: %w", f, err)
		}
	}
	s.model, s.built = c, true

	versions := map[Flavour]map[string]string{}
	for _, f := range flavours {
		versions[f] = map[string]string{}
		for _, typ := range []string{resource.ClusterType, resource.EndpointType, resource.RouteType, resource.ListenerType} {
			versions[f][typ] = out.served[f].GetVersion(typ)
		}
	}
	s.statusMu.Lock()
	s.status = Status{Versions: versions, Built: start, BuildTime: took, Counts: out.counts}
	s.table = out.table
	s.statusMu.Unlock()
	s.log.Debug("xDS resources updated", "took", took, "clusters", out.counts.Clusters, "routes", out.counts.Routes)
	return nil
}

// Status is what the server serves now; its maps are not to be modified.
func (s *Server) Status() Status {
	s.statusMu.RLock()
	st := s.status
	s.statusMu.RUnlock()
	st.Rejected, st.LastRejection = s.nacks.stats()
	return st
}

// Routes is the route table served now, first match first.
func (s *Server) Routes() []RouteView {
	s.statusMu.RLock()
	t := s.table
	s.statusMu.RUnlock()
	if t == nil {
		return nil
	}
	return t.views()
}

// sent is the last response of a type on a stream.
type sent struct{ nonce, version string }

// nackGuard keeps a client that rejects a response from getting it again at
// once, forever. go-control-plane answers every request whose version is
// not the snapshot's, and a rejection carries the last version the client
// accepted: grpc-go, which rejects TLS clusters without its certificate
// providers, would loop. Taking the rejected version for known makes the
// cache wait for the next one.
type nackGuard struct {
	log *slog.Logger

	mu       sync.Mutex
	last     map[int64]map[string]sent // stream → type URL → last response
	count    uint64
	lastNACK string
}

func (g *nackGuard) response(stream int64, resp *discovery.DiscoveryResponse) {
	g.mu.Lock()
	defer g.mu.Unlock()
	types := g.last[stream]
	if types == nil {
		types = map[string]sent{}
		g.last[stream] = types
	}
	types[resp.GetTypeUrl()] = sent{nonce: resp.GetNonce(), version: resp.GetVersionInfo()}
}

func (g *nackGuard) request(stream int64, req *discovery.DiscoveryRequest) {
	if req.GetErrorDetail() == nil {
		return
	}
	g.rejected(req.GetNode(), req.GetTypeUrl(), req.GetErrorDetail().GetMessage())
	g.mu.Lock()
	defer g.mu.Unlock()
	if last, ok := g.last[stream][req.GetTypeUrl()]; ok && last.nonce == req.GetResponseNonce() {
		req.VersionInfo = last.version
	}
}

// rejected logs a rejection at Warn when it says something new: a client
// that rejects a resource rejects it again with every later version.
func (g *nackGuard) rejected(n *core.Node, typeURL, msg string) {
	g.mu.Lock()
	g.count++
	level := slog.LevelDebug
	if msg != g.lastNACK {
		level = slog.LevelWarn
	}
	g.lastNACK = msg
	g.mu.Unlock()
	g.log.Log(context.Background(), level, "xDS client rejected resources", "node", n.GetId(), "user_agent", n.GetUserAgentName(), "type", typeURL, "err", msg)
}

func (g *nackGuard) closed(stream int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.last, stream)
}

func (g *nackGuard) stats() (uint64, string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.count, g.lastNACK
}

// cpLogger is go-control-plane's logger on slog. Its Info messages are per
// watch, so they go out at Debug.
type cpLogger struct{ l *slog.Logger }

func (c cpLogger) Debugf(format string, args ...any) { c.logf(slog.LevelDebug, format, args) }
func (c cpLogger) Infof(format string, args ...any)  { c.logf(slog.LevelDebug, format, args) }
func (c cpLogger) Warnf(format string, args ...any)  { c.logf(slog.LevelWarn, format, args) }
func (c cpLogger) Errorf(format string, args ...any) { c.logf(slog.LevelError, format, args) }

func (c cpLogger) logf(level slog.Level, format string, args []any) {
	if c.l.Enabled(context.Background(), level) {
		c.l.Log(context.Background(), level, fmt.Sprintf(format, args...))
	}
}
