package xds

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
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

// Server serves the resources built from the last model it was given, to
// each client in its flavour, over ADS or a stream per type, state of the
// world or delta.
//
// Each type is served from one of go-control-plane's linear caches (per
// flavour where the flavours differ: clusters and listeners), which an
// update tells only what changed. A cache marshals a resource once for
// every client, where a snapshot cache marshals the whole snapshot again
// for each client on each change; and a state-of-the-world client is sent
// only the load assignments that changed (Envoy and grpc-go keep the
// others), not all of them.
type Server struct {
	log    *slog.Logger
	gate   *gate
	caches map[feedKey]*cache.LinearCache
	prefix string
	xds    serverv3.Server
	nacks  nackGuard
	// wanted are the flavours some client asked for, read without the
	// lock on every request: a build holds it.
	wanted [2]atomic.Bool

	mu       sync.Mutex // one Update at a time; guards the fields below
	b        builder
	model    Model
	built    bool
	served   map[feedKey]map[string]entry // what each cache holds
	versions map[feedKey]uint64           // each cache's version number

	statusMu sync.RWMutex
	status   Status
	table    *table
}

// feedKey names a cache: a type, and the flavour for the types whose
// resources differ between flavours.
type feedKey struct {
	typ     types.ResponseType
	flavour Flavour // empty: every flavour's
}

// feeds are the caches in the order an update reaches them: clusters
// before the endpoints and routes that name them (Envoy's make before
// break).
var feeds = []feedKey{
	{types.Cluster, ADS}, {types.Cluster, Classic},
	{types.Endpoint, ""},
	{types.Listener, ADS}, {types.Listener, Classic},
	{types.Route, ""},
}

// keyOf is the cache that serves typ to a client of flavour f.
func keyOf(typ types.ResponseType, f Flavour) feedKey {
	if typ == types.Cluster || typ == types.Listener {
		return feedKey{typ, f}
	}
	return feedKey{typ, ""}
}

func (k feedKey) String() string {
	url, _ := cache.GetResponseTypeURL(k.typ)
	return string(k.flavour) + "/" + url
}

// Status is what the server serves now.
type Status struct {
	// Versions are flavour → resource type URL → the version its clients
	// have. Versions start with the server's instance prefix, so a
	// version is never reused by a restarted coordinator or another
	// replica: a client that reconnects anywhere gets the current
	// resources.
	Versions  map[Flavour]map[string]string
	Built     time.Time     // when the last changed model was built
	BuildTime time.Duration // how long building, validating and checking its resources took
	// ServeTime is how long handing them to the caches took, which
	// answers every client waiting for a change.
	ServeTime time.Duration
	// FullBuildTime is how long the last build that made every worker's
	// resources anew took (a coordinator's first, or a flavour's).
	FullBuildTime time.Duration
	Counts
	Rejected      uint64 // responses clients rejected (NACKs)
	LastRejection string // the last rejection's message
}

// NewServer is a server with nothing to serve until the first Update;
// clients that ask before it wait. Its streams end when ctx does. A nil
// log is slog's default.
func NewServer(ctx context.Context, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		log:      log,
		nacks:    nackGuard{log: log, last: map[int64]map[string]sent{}},
		caches:   map[feedKey]*cache.LinearCache{},
		served:   map[feedKey]map[string]entry{},
		versions: map[feedKey]uint64{},
		prefix:   instancePrefix(),
	}
	cl := cpLogger{log}
	mux := &cache.MuxCache{
		Classify: func(r *cache.Request) string {
			return keyOf(cache.GetResponseType(r.GetTypeUrl()), FlavourOf(r.GetNode())).String()
		},
		ClassifyDelta: func(r *cache.DeltaRequest) string {
			return keyOf(cache.GetResponseType(r.GetTypeUrl()), FlavourOf(r.GetNode())).String()
		},
		Caches: map[string]cache.Cache{},
	}
	for _, k := range feeds {
		url, _ := cache.GetResponseTypeURL(k.typ)
		c := cache.NewLinearCache(url, cache.WithVersionPrefix(s.prefix), cache.WithLogger(cl))
		s.caches[k] = c
		mux.Caches[k.String()] = c
		s.served[k] = map[string]entry{}
	}
	s.gate = newGate(mux, s.want)
	s.xds = serverv3.NewServer(ctx, s.gate, serverv3.CallbackFuncs{
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

// instancePrefix tells this server's versions from any other's: the start
// time, and random bits for two replicas started in the same nanosecond.
func instancePrefix() string {
	var r [4]byte
	_, _ = rand.Read(r[:]) // never fails (crypto/rand)
	return strconv.FormatInt(time.Now().UnixNano(), 36) + hex.EncodeToString(r[:]) + "-"
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
	return s.build(c)
}

// want builds flavour f's resources from now on, if no client asked for
// them before: their first client waits for them.
func (s *Server) want(f Flavour) {
	wanted := &s.wanted[slices.Index(flavours, f)]
	if wanted.Load() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	wanted.Store(true)
	if !s.b.addFlavour(f) || !s.built {
		return // the first model will be built with it
	}
	if err := s.build(s.model); err != nil {
		// The model was served in other flavours: this is a bug, and
		// the flavour's clients wait on.
		s.log.Error("xDS resources of a new flavour refused", "flavour", f, "err", err)
	}
}

// build builds and serves c. s.mu is held.
func (s *Server) build(c Model) error {
	start := time.Now()
	out, err := s.b.build(c)
	if err != nil {
		return err
	}
	built := time.Now()
	for _, k := range feeds {
		if k.flavour != "" && !slices.Contains(s.b.flavours, k.flavour) {
			continue
		}
		s.serve(k, out.resources(cmp.Or(k.flavour, ADS))[k.typ])
		s.gate.open(k)
	}
	s.model, s.built = c, true
	took, served := built.Sub(start), time.Since(built)

	versions := map[Flavour]map[string]string{}
	for _, f := range flavours {
		versions[f] = map[string]string{}
		for _, typ := range []types.ResponseType{types.Cluster, types.Endpoint, types.Route, types.Listener} {
			url, _ := cache.GetResponseTypeURL(typ)
			versions[f][url] = s.prefix + strconv.FormatUint(s.versions[keyOf(typ, f)], 10)
		}
	}
	s.statusMu.Lock()
	full := s.status.FullBuildTime
	if out.counts.Workers > 0 && out.counts.NewWorkers == out.counts.Workers {
		full = took
	}
	s.status = Status{Versions: versions, Built: start, BuildTime: took, ServeTime: served, FullBuildTime: full, Counts: out.counts}
	s.table = out.table
	s.statusMu.Unlock()
	s.log.Debug("xDS resources updated", "build", took, "serve", served, "clusters", out.counts.Clusters, "routes", out.counts.Routes)
	return nil
}

// serve gives cache k the resources es, telling it only what changed.
func (s *Server) serve(k feedKey, es []entry) {
	served := s.served[k]
	changed := map[string]types.Resource{}
	for _, e := range es {
		if old, ok := served[e.name]; !ok || !old.same(e) {
			changed[e.name] = e.wire
			served[e.name] = e.bytesOnly()
		}
	}
	var removed []string
	if len(served) > len(es) {
		keep := make(map[string]bool, len(es))
		for _, e := range es {
			keep[e.name] = true
		}
		for name := range served {
			if !keep[name] {
				removed = append(removed, name)
				delete(served, name)
			}
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		return
	}
	// Every call is a new version of the cache (its counter, which the
	// status mirrors).
	s.versions[k]++
	if err := s.caches[k].UpdateResources(changed, removed); err != nil {
		// The cache only fails to marshal, and these are bytes already.
		s.log.Error("xDS cache refused an update", "cache", k.String(), "err", err)
	}
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
