package xds

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/dhvisor/dhvisor/internal/envoybootstrap"
)

// Flavour is how a client gets the resources: the same clusters, endpoints
// and routes, with the config sources it can follow.
type Flavour string

const (
	// Classic is Envoy on Deephaven's documented bootstrap: no ADS, CDS on
	// its own stream from the static cluster xds_service. Its EDS and RDS
	// config sources must name that cluster: with ads it never gets them.
	Classic Flavour = "classic"
	// ADS is grpc-go and dhvisor's own ADS bootstraps. grpc-go accepts only
	// ads (or self) config sources and an api_listener.
	ADS Flavour = "ads"
)

// flavours are the flavours a model can be built in.
var flavours = []Flavour{ADS, Classic}

// Names fixed by Deephaven's bootstrap and clients.
const (
	ListenerName = "deephaven" // grpc-go clients dial xds:///deephaven
	// The names the bootstrap dhvisor renders (Deephaven's) gives: the RDS
	// name, and the static cluster of this server.
	RouteConfigName = envoybootstrap.RouteConfigName
	XDSClusterName  = envoybootstrap.XDSClusterName
	PrefixHeader    = "envoy-prefix" // Core+ clients name their worker with it
)

// ServiceCluster, WorkerCluster and ExtraCluster name the clusters; the
// prefixes keep a worker named like a service from colliding with it.
func ServiceCluster(name string) string { return "svc_" + name }

// WorkerCluster is the cluster of the worker called name.
func WorkerCluster(name string) string { return "worker_" + name }

// ExtraCluster is the cluster of the extra route called name.
func ExtraCluster(name string) string { return "extra_" + name }

const connectTimeout = 5 * time.Second

// Shared by every resource that needs them; never modified once built.
var (
	connectTimeoutPB = durationpb.New(connectTimeout)
	// noTimeout replaces Envoy's 15 s route timeout, which would cut
	// long-lived gRPC streams and websockets.
	noTimeout    = durationpb.New(0)
	http2Options = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&upstreamhttp.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &core.Http2ProtocolOptions{},
				},
			},
		},
	})}
	routerFilter = &hcm.HttpFilter{
		Name:       wellknown.Router,
		ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&router.Router{})},
	}
	configSources = map[Flavour]*core.ConfigSource{
		ADS: {
			ResourceApiVersion:    core.ApiVersion_V3,
			ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
		},
		Classic: {
			ResourceApiVersion: core.ApiVersion_V3,
			ConfigSourceSpecifier: &core.ConfigSource_ApiConfigSource{ApiConfigSource: &core.ApiConfigSource{
				ApiType:             core.ApiConfigSource_GRPC,
				TransportApiVersion: core.ApiVersion_V3,
				GrpcServices: []*core.GrpcService{{
					TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: XDSClusterName}},
				}},
			}},
		},
	}
)

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

// Build is the snapshot a client of flavour f gets for model m, its
// resources read back from the bytes the server would send, each with the
// version delta xDS gives it. The server itself serves from per-type caches
// (see Server); Build is the same resources as one snapshot, for tests and
// tools.
func Build(m Model, f Flavour) (*cache.Snapshot, error) {
	if f != ADS && f != Classic {
		return nil, fmt.Errorf("unknown xDS flavour %q", f)
	}
	b := &builder{flavours: []Flavour{f}}
	out, err := b.build(canonical(m))
	if err != nil {
		return nil, err
	}
	snap := &cache.Snapshot{VersionMap: map[string]map[string]string{}}
	for typ, es := range out.resources(f) {
		url, _ := cache.GetResponseTypeURL(typ)
		items := make(map[string]types.ResourceWithTTL, len(es))
		versions := make(map[string]string, len(es))
		for _, e := range es {
			m, err := decode(e.wire, url)
			if err != nil {
				return nil, err
			}
			items[e.name] = types.ResourceWithTTL{Resource: m}
			versions[e.name] = cache.HashResource(e.bytes())
		}
		snap.Resources[typ] = cache.Resources{Items: items}
		snap.VersionMap[url] = versions
	}
	return snap, nil
}

// decode reads the resource of type typeURL back from its wire form.
func decode(wire types.Resource, typeURL string) (types.Resource, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(typeURL)
	if err != nil {
		return nil, err
	}
	m := mt.New().Interface()
	if err := proto.Unmarshal(wire.ProtoReflect().GetUnknown(), m); err != nil {
		return nil, fmt.Errorf("%s: %w", typeURL, err)
	}
	return m, nil
}

// entry is a validated resource, marshalled.
type entry struct {
	name string
	// res is the resource itself, kept for clusters and listeners only:
	// Consistent reads them. Routes and load assignments, most of a
	// build's memory, are read back from their bytes when needed.
	res  types.Resource
	wire types.Resource // as it is sent: see wireResource
}

// bytes is the resource as it goes on the wire.
func (e entry) bytes() []byte { return e.wire.ProtoReflect().GetUnknown() }

// same says whether e and o send the same bytes. Entries a build reuses
// share their wire resource, which settles most comparisons at once.
func (e entry) same(o entry) bool {
	return e.wire == o.wire || bytes.Equal(e.bytes(), o.bytes())
}

// bytesOnly is e without its resource.
func (e entry) bytesOnly() entry {
	e.res = nil
	return e
}

func newEntry(res types.Resource) (entry, error) {
	if v, ok := res.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			if r, ok := res.(*route.Route); ok {
				return entry{}, fmt.Errorf("route %v: %w", r.GetMatch(), err)
			}
			return entry{}, fmt.Errorf("%s %q: %w", res.ProtoReflect().Descriptor().Name(), cache.GetResourceName(res), err)
		}
	}
	raw, err := marshal(res)
	if err != nil {
		return entry{}, fmt.Errorf("marshal %q: %w", cache.GetResourceName(res), err)
	}
	e := marshalled(cache.GetResourceName(res), raw)
	e.res = res
	return e, nil
}

// marshal is go-control-plane's MarshalResource, done by the code
// vtprotobuf generated for Envoy's types when they are built with the
// vtprotobuf tag (make builds with it): with 10,000 workers,
// reflection-driven marshalling was a third of a coordinator's first build,
// the generated code a quarter less CPU in all. Both orders of fields are
// valid encodings; a build's bytes all come from one of them.
func marshal(res types.Resource) ([]byte, error) {
	if vt, ok := res.(interface{ MarshalVTStrict() ([]byte, error) }); ok {
		return vt.MarshalVTStrict()
	}
	return cache.MarshalResource(res)
}

// marshalled is the entry of the resource whose bytes are raw.
func marshalled(name string, raw []byte) entry {
	return entry{name: name, wire: wireResource(raw)}
}

// wireResource is a resource as the server sends it: its bytes, marshalled
// once per build at most. An Empty whose unknown fields are the resource's
// bytes marshals to exactly those bytes, and go-control-plane needs no more
// of a resource than its bytes: names come from the caches' keys, type URLs
// from the requests, and delta versions are hashes of the bytes.
func wireResource(raw []byte) types.Resource {
	m := &emptypb.Empty{}
	m.ProtoReflect().SetUnknown(raw)
	return m
}

// workerKey is what a worker's resources are built from: registrations
// that change nothing here (a new nonce) rebuild nothing.
type workerKey struct {
	Name, Prefix, Host, Node string
	Port                     uint32
	TLS, HTTP2               bool
}

// workerEntry is one worker's resources, kept across builds so that a
// registration builds and validates only the workers it changed.
type workerEntry struct {
	clusters    map[Flavour]entry
	cla         entry
	headerRoute *entry // nil when the worker has no prefix
	pathRoute   entry
	// used is the last build that used the entry: the memo forgets
	// entries the build before did not use.
	used uint64
}

// builder keeps, from one build to the next, the resources that do not
// change: the listeners and the workers'.
type builder struct {
	// flavours are the flavours whose clusters and listeners it builds:
	// those some client asked for. Deephaven's Envoy needs only the classic
	// ones, grpc-go only the ADS ones, and a worker's clusters are the
	// larger part of a build.
	flavours  []Flavour
	workers   map[workerKey]*workerEntry
	builds    uint64
	listeners map[Flavour]entry
}

// addFlavour has later builds make f's clusters and listener too, and
// says whether f is new.
func (b *builder) addFlavour(f Flavour) bool {
	if slices.Contains(b.flavours, f) {
		return false
	}
	b.flavours = append(b.flavours, f)
	slices.Sort(b.flavours)
	// The workers remembered lack f's clusters: the next build makes them
	// all anew.
	b.workers = nil
	return true
}

// table is one build's resources, each type in the canonical model's
// order.
type table struct {
	clusters map[Flavour][]entry // of the flavours built
	// clusterCount is how many clusters each flavour has.
	clusterCount int
	// extraClusters are the extra routes', the same in every flavour.
	extraClusters []entry
	newWorkers    int // workers built anew, not reused
	clas          []entry
	routes        []entry // rds_config's, first match first
	rds           entry   // rds_config itself
	listeners     map[Flavour]entry
}

// built is a build's result.
type built struct {
	table  *table
	counts Counts
}

// Counts are how many resources a build made.
type Counts struct {
	Clusters, LoadAssignments, Routes int
	// Workers is how many workers there are, NewWorkers how many of them
	// the build made anew (the others' resources it reused).
	Workers, NewWorkers int
}

// resources are the resources a client of flavour f gets, by type.
func (b *built) resources(f Flavour) map[types.ResponseType][]entry {
	return map[types.ResponseType][]entry{
		types.Cluster:  b.table.clusters[f],
		types.Endpoint: b.table.clas,
		types.Route:    {b.table.rds},
		types.Listener: {b.table.listeners[f]},
	}
}

func (b *builder) build(m Model) (*built, error) {
	b.builds++
	t, err := b.table(m)
	if err != nil {
		return nil, err
	}
	if b.listeners == nil {
		b.listeners = map[Flavour]entry{}
	}
	for _, f := range b.flavours {
		if _, ok := b.listeners[f]; !ok {
			if b.listeners[f], err = newEntry(httpListener(f)); err != nil {
				return nil, err
			}
		}
	}
	t.listeners = b.listeners
	if t.rds, err = routeConfig(t.routes); err != nil {
		return nil, err
	}
	out := &built{table: t}
	for _, f := range b.flavours {
		if err := consistent(snapshotOf(out.resources(f)), f); err != nil {
			return nil, fmt.Errorf("%s snapshot: %w", f, err)
		}
	}
	out.counts = Counts{Clusters: t.clusterCount, LoadAssignments: len(t.clas), Routes: len(t.routes), Workers: len(m.Workers), NewWorkers: t.newWorkers}
	b.forgetUnused()
	return out, nil
}

// forgetUnused drops the workers the last build did not use.
func (b *builder) forgetUnused() {
	for k, we := range b.workers {
		if we.used != b.builds {
			delete(b.workers, k)
		}
	}
}

// snapshotOf is what Consistent checks: the resources themselves where
// they were kept (clusters and listeners), the others by name.
func snapshotOf(res map[types.ResponseType][]entry) *cache.Snapshot {
	snap := &cache.Snapshot{}
	for typ, es := range res {
		items := make(map[string]types.ResourceWithTTL, len(es))
		for _, e := range es {
			r := e.res
			if r == nil {
				r = e.wire
			}
			items[e.name] = types.ResourceWithTTL{Resource: r}
		}
		snap.Resources[typ] = cache.Resources{Items: items}
	}
	return snap
}

// consistent is the snapshot's Consistent check. go-control-plane finds
// route names only in listeners' filter chains, not in an api_listener, so
// for the ADS flavour it checks clusters against endpoints and this checks
// the api_listener's route names against the routes.
func consistent(snap *cache.Snapshot, f Flavour) error {
	if f != ADS {
		return snap.Consistent()
	}
	partial := *snap
	partial.Resources[types.Listener] = cache.Resources{}
	partial.Resources[types.Route] = cache.Resources{}
	if err := partial.Consistent(); err != nil {
		return err
	}
	want := map[string]bool{}
	for _, l := range snap.Resources[types.Listener].Items {
		m := &hcm.HttpConnectionManager{}
		if err := l.Resource.(*listener.Listener).GetApiListener().GetApiListener().UnmarshalTo(m); err != nil {
			return fmt.Errorf("api_listener: %w", err)
		}
		want[m.GetRds().GetRouteConfigName()] = true
	}
	routes := snap.Resources[types.Route].Items
	if len(want) != len(routes) {
		return fmt.Errorf("listeners name %d route configurations, the snapshot has %d", len(want), len(routes))
	}
	for name := range routes {
		if !want[name] {
			return fmt.Errorf("route configuration %q named by no listener", name)
		}
	}
	return nil
}

// table builds the clusters, endpoints and routes, reusing the workers'
// resources from the last build.
func (b *builder) table(m Model) (*table, error) {
	services := m.Services
	clusters := len(services) + len(m.Workers) + len(m.ExtraRoutes)
	t := &table{
		clusters:     map[Flavour][]entry{},
		clusterCount: clusters,
		clas:         make([]entry, 0, len(services)+len(m.Workers)),
		routes:       make([]entry, 0, 2*len(m.Workers)+2*len(m.ExtraRoutes)+6),
	}
	for _, f := range b.flavours {
		t.clusters[f] = make([]entry, 0, clusters)
	}
	for i, s := range services {
		if s.Name == "" {
			return nil, errors.New("a service without a name")
		}
		if i > 0 && services[i-1].Name == s.Name {
			return nil, fmt.Errorf("service %s listed twice", s.Name)
		}
		name := ServiceCluster(s.Name)
		for _, f := range b.flavours {
			e, err := newEntry(edsCluster(f, name, s.TLS, "", s.HTTP2))
			if err != nil {
				return nil, err
			}
			t.clusters[f] = append(t.clusters[f], e)
		}
		e, err := newEntry(loadAssignment(name, s.Endpoints))
		if err != nil {
			return nil, err
		}
		t.clas = append(t.clas, e.bytesOnly())
	}

	workers, made, err := b.workerEntries(m.Workers)
	if err != nil {
		return nil, err
	}
	t.newWorkers = made
	for _, we := range workers {
		for _, f := range b.flavours {
			t.clusters[f] = append(t.clusters[f], we.clusters[f])
		}
		t.clas = append(t.clas, we.cla)
	}

	extras := map[string]bool{}
	for _, r := range m.ExtraRoutes {
		if r.Name == "" {
			return nil, fmt.Errorf("extra route %s without a name", r.Origin)
		}
		if extras[r.Name] {
			return nil, fmt.Errorf("extra route %s (%s) defined twice", r.Name, r.Origin)
		}
		extras[r.Name] = true
		if r.Port <= 0 || r.Port > 65535 {
			return nil, fmt.Errorf("extra route %s (%s): port %d out of range", r.Name, r.Origin, r.Port)
		}
		// The same cluster in every flavour: it names no config source.
		e, err := newEntry(dnsCluster(ExtraCluster(r.Name), r.Host, uint32(r.Port), r.TLS))
		if err != nil {
			return nil, fmt.Errorf("extra route %s (%s): %w", r.Name, r.Origin, err)
		}
		t.extraClusters = append(t.extraClusters, e)
		for _, f := range b.flavours {
			t.clusters[f] = append(t.clusters[f], e)
		}
	}

	// First match wins: a worker's header beats every path, a worker's
	// path beats the services' and the extra routes, of which the most
	// specific comes first, and the default comes last.
	for _, we := range workers {
		if we.headerRoute != nil {
			t.routes = append(t.routes, *we.headerRoute)
		}
	}
	for _, we := range workers {
		t.routes = append(t.routes, we.pathRoute)
	}
	var static []*route.Route
	for _, s := range services {
		for _, prefix := range s.Routes {
			static = append(static, prefixRoute(prefix, ServiceCluster(s.Name), ""))
		}
	}
	for _, r := range m.ExtraRoutes {
		name := ExtraCluster(r.Name)
		if r.ExactPrefix {
			static = append(static, prefixRoute(r.Prefix, name, r.PrefixRewrite))
			continue
		}
		p := strings.TrimSuffix(r.Prefix, "/")
		static = append(static, pathRoute(p, name, r.PrefixRewrite), prefixRoute(p+"/", name, r.PrefixRewrite))
	}
	// Stable: at equal specificity the services' routes stay first.
	slices.SortStableFunc(static, func(a, b *route.Route) int { return specificity(b) - specificity(a) })
	for _, s := range services {
		if s.Default {
			static = append(static, prefixRoute("/", ServiceCluster(s.Name), ""))
			break // services are sorted: the first one marked wins
		}
	}
	for _, r := range static {
		e, err := newEntry(r)
		if err != nil {
			return nil, err
		}
		t.routes = append(t.routes, e.bytesOnly())
	}
	return t, nil
}

// workerEntries are the workers' resources: the last build's for workers
// that did not change, new ones for the others, built in parallel since a
// coordinator's first build makes them all. made is how many it made.
func (b *builder) workerEntries(ws []Worker) (entries []*workerEntry, made int, err error) {
	if b.workers == nil {
		b.workers = make(map[workerKey]*workerEntry, len(ws))
	}
	entries = make([]*workerEntry, len(ws))
	keys := make([]workerKey, len(ws))
	var missing []int
	for i, w := range ws {
		if w.Name == "" {
			return nil, 0, fmt.Errorf("worker on %s:%d without a name", w.Host, w.Port)
		}
		if i > 0 && ws[i-1].Name == w.Name {
			return nil, 0, fmt.Errorf("worker %s registered twice (%s, %s)", w.Name, ws[i-1].Dispatcher, w.Dispatcher)
		}
		keys[i] = workerKey{Name: w.Name, Prefix: w.Prefix, Host: w.Host, Node: w.Node, Port: w.Port, TLS: w.TLS, HTTP2: w.HTTP2}
		if we, ok := b.workers[keys[i]]; ok {
			we.used = b.builds
			entries[i] = we
		} else {
			missing = append(missing, i)
		}
	}
	errs := make([]error, len(missing))
	parallel(len(missing), func(j int) {
		entries[missing[j]], errs[j] = newWorkerEntry(keys[missing[j]], b.flavours)
	})
	for _, err := range errs {
		if err != nil {
			return nil, 0, err
		}
	}
	for _, i := range missing {
		entries[i].used = b.builds
		b.workers[keys[i]] = entries[i]
	}
	return entries, len(missing), nil
}

// parallel calls fn for 0..n-1 on every processor, when n is worth it.
func parallel(n int, fn func(i int)) {
	procs := min(runtime.GOMAXPROCS(0), n/64+1)
	var wg sync.WaitGroup
	for p := range procs {
		wg.Go(func() {
			for i := p; i < n; i += procs {
				fn(i)
			}
		})
	}
	wg.Wait()
}

// specificity orders routes: a longer match first, and an exact path
// before a prefix of the same length.
func specificity(r *route.Route) int {
	if p := r.GetMatch().GetPath(); p != "" {
		return 2*len(p) + 1
	}
	return 2 * len(r.GetMatch().GetPrefix())
}

func newWorkerEntry(k workerKey, flavours []Flavour) (*workerEntry, error) {
	name := WorkerCluster(k.Name)
	we := &workerEntry{clusters: make(map[Flavour]entry, len(flavours))}
	for _, f := range flavours {
		e, err := newEntry(edsCluster(f, name, k.TLS, k.Host, k.HTTP2))
		if err != nil {
			return nil, fmt.Errorf("worker %s: %w", k.Name, err)
		}
		we.clusters[f] = e
	}
	cla, err := newEntry(loadAssignment(name, []Endpoint{{Node: k.Node, Host: k.Host, Port: k.Port}}))
	if err != nil {
		return nil, fmt.Errorf("worker %s: %w", k.Name, err)
	}
	we.cla = cla.bytesOnly()
	if k.Prefix != "" {
		e, err := newEntry(headerRoute(PrefixHeader, k.Prefix, name))
		if err != nil {
			return nil, fmt.Errorf("worker %s: %w", k.Name, err)
		}
		e = e.bytesOnly()
		we.headerRoute = &e
	}
	path, err := newEntry(prefixRoute("/worker/"+k.Name+"/", name, "/"))
	if err != nil {
		return nil, fmt.Errorf("worker %s: %w", k.Name, err)
	}
	we.pathRoute = path.bytesOnly()
	return we, nil
}

// edsCluster is a cluster whose endpoints come from EDS. sni, when the
// cluster has a single host, names it in the TLS handshake; endpoints
// with a hostname name themselves (auto_host_sni).
func edsCluster(f Flavour, name string, tls bool, sni string, http2 bool) *cluster.Cluster {
	// One allocation for the messages of the tree (see lbEndpoint).
	p := &struct {
		c   cluster.Cluster
		typ cluster.Cluster_Type
		eds cluster.Cluster_EdsClusterConfig
	}{}
	p.typ.Type = cluster.Cluster_EDS
	p.eds.EdsConfig = configSources[f]
	c := &p.c
	c.Name, c.ConnectTimeout, c.ClusterDiscoveryType, c.EdsClusterConfig = name, connectTimeoutPB, &p.typ, &p.eds
	upstream(c, tls, sni, http2)
	return c
}

// dnsCluster reaches an extra route's host, which may be a DNS name (EDS
// endpoints must be addresses). LOGICAL_DNS is the DNS type both Envoy and
// grpc-go accept.
func dnsCluster(name, host string, port uint32, tls bool) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 name,
		ConnectTimeout:       connectTimeoutPB,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_LOGICAL_DNS},
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpoint.LocalityLbEndpoints{{
				LbEndpoints: []*endpoint.LbEndpoint{lbEndpoint(host, port)},
			}},
		},
	}
	upstream(c, tls, host, false)
	return c
}

func upstream(c *cluster.Cluster, tls bool, sni string, http2 bool) {
	if http2 {
		c.TypedExtensionProtocolOptions = http2Options
	}
	if tls {
		ctx := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{}, AutoHostSni: true}
		if isHostname(sni) {
			ctx.Sni = sni
		}
		c.TransportSocket = &core.TransportSocket{
			Name:       wellknown.TransportSocketTLS,
			ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)},
		}
	}
}

// isHostname says whether host may be sent as SNI, which must not be an
// address (RFC 6066).
func isHostname(host string) bool {
	return host != "" && net.ParseIP(host) == nil
}

// loadAssignment groups the endpoints, sorted by node, in one locality per
// node. grpc-go drops localities without a weight; weighing each by its
// endpoints keeps the balance per endpoint.
func loadAssignment(name string, eps []Endpoint) *endpoint.ClusterLoadAssignment {
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
	for i := 0; i < len(eps); {
		j := i
		for j < len(eps) && eps[j].Node == eps[i].Node {
			j++
		}
		p := &struct {
			loc      endpoint.LocalityLbEndpoints
			locality core.Locality
			weight   wrapperspb.UInt32Value
		}{}
		p.locality.SubZone = eps[i].Node
		p.weight.Value = uint32(j - i)
		p.loc.Locality, p.loc.LoadBalancingWeight = &p.locality, &p.weight
		p.loc.LbEndpoints = make([]*endpoint.LbEndpoint, 0, j-i)
		for _, e := range eps[i:j] {
			p.loc.LbEndpoints = append(p.loc.LbEndpoints, lbEndpoint(e.Host, e.Port))
		}
		cla.Endpoints = append(cla.Endpoints, &p.loc)
		i = j
	}
	return cla
}

// lbEndpoint allocates the messages of its tree as one: a cold build of
// 10,000 workers made some fifty small objects per worker, and allocating
// and collecting them was a third of its time.
func lbEndpoint(host string, port uint32) *endpoint.LbEndpoint {
	p := &struct {
		lb     endpoint.LbEndpoint
		hostID endpoint.LbEndpoint_Endpoint
		ep     endpoint.Endpoint
		addr   core.Address
		sock   core.Address_SocketAddress
		sa     core.SocketAddress
		port   core.SocketAddress_PortValue
	}{}
	p.port.PortValue = port
	p.sa.Address, p.sa.PortSpecifier = host, &p.port
	p.sock.SocketAddress = &p.sa
	p.addr.Address = &p.sock
	p.ep.Address = &p.addr
	if isHostname(host) {
		p.ep.Hostname = host
	}
	p.hostID.Endpoint = &p.ep
	p.lb.HostIdentifier, p.lb.HealthStatus = &p.hostID, core.HealthStatus_HEALTHY
	return &p.lb
}

// routeParts are the messages of a route, allocated at once (see
// lbEndpoint).
type routeParts struct {
	route   route.Route
	match   route.RouteMatch
	prefix  route.RouteMatch_Prefix
	path    route.RouteMatch_Path
	wrapper route.Route_Route
	action  route.RouteAction
	cluster route.RouteAction_Cluster
}

func newRoute(cluster, rewrite string) *routeParts {
	p := &routeParts{}
	p.cluster.Cluster = cluster
	p.action.ClusterSpecifier, p.action.PrefixRewrite, p.action.Timeout = &p.cluster, rewrite, noTimeout
	p.wrapper.Route = &p.action
	p.route.Match, p.route.Action = &p.match, &p.wrapper
	return p
}

func prefixRoute(prefix, cluster, rewrite string) *route.Route {
	p := newRoute(cluster, rewrite)
	p.prefix.Prefix = prefix
	p.match.PathSpecifier = &p.prefix
	return &p.route
}

func pathRoute(path, cluster, rewrite string) *route.Route {
	p := newRoute(cluster, rewrite)
	p.path.Path = path
	p.match.PathSpecifier = &p.path
	return &p.route
}

// headerRoute routes every request that carries header=value.
func headerRoute(header, value, cluster string) *route.Route {
	r := prefixRoute("/", cluster, "")
	p := &struct {
		m     [1]*route.HeaderMatcher
		hm    route.HeaderMatcher
		str   route.HeaderMatcher_StringMatch
		sm    matcher.StringMatcher
		exact matcher.StringMatcher_Exact
	}{}
	p.exact.Exact = value
	p.sm.MatchPattern = &p.exact
	p.str.StringMatch = &p.sm
	p.hm.Name, p.hm.HeaderMatchSpecifier = header, &p.str
	p.m[0] = &p.hm
	r.Match.Headers = p.m[:]
	return r
}

// routeConfig is rds_config. Its routes were validated and marshalled one
// by one when built, so only the shell around them is validated and
// marshalled here, and its bytes are the shell's with the routes' appended:
// with 10,000 workers, validating or marshalling all their routes again on
// every build would take longer than the rest of the build. A message's
// fields may come in any order on the wire, and repeated ones keep theirs:
// the bytes read back as the whole configuration (a test checks).
func routeConfig(routes []entry) (entry, error) {
	vh := &route.VirtualHost{Name: ListenerName, Domains: []string{"*"}}
	rc := &route.RouteConfiguration{Name: RouteConfigName, VirtualHosts: []*route.VirtualHost{vh}}
	if err := rc.ValidateAll(); err != nil {
		return entry{}, fmt.Errorf("route configuration: %w", err)
	}
	vhRaw, err := marshal(vh)
	if err != nil {
		return entry{}, err
	}
	raw, err := marshal(&route.RouteConfiguration{Name: RouteConfigName})
	if err != nil {
		return entry{}, err
	}
	const vhRoutes, rcVirtualHosts = 3, 2 // field numbers
	size := len(vhRaw)
	for _, r := range routes {
		size += protowire.SizeTag(vhRoutes) + protowire.SizeBytes(len(r.wire.ProtoReflect().GetUnknown()))
	}
	vhRaw = slices.Grow(vhRaw, size-len(vhRaw))
	raw = slices.Grow(raw, protowire.SizeTag(rcVirtualHosts)+protowire.SizeBytes(size))
	for _, r := range routes {
		vhRaw = protowire.AppendBytes(protowire.AppendTag(vhRaw, vhRoutes, protowire.BytesType), r.wire.ProtoReflect().GetUnknown())
	}
	raw = protowire.AppendBytes(protowire.AppendTag(raw, rcVirtualHosts, protowire.BytesType), vhRaw)
	return marshalled(RouteConfigName, raw), nil
}

// httpListener is the listener each flavour's clients need: grpc-go an
// api_listener, Envoy a socket listener on 8000 that upgrades websockets.
// Its content never changes, so a listener carrying traffic is never
// drained by an update.
func httpListener(f Flavour) *listener.Listener {
	m := &hcm.HttpConnectionManager{
		StatPrefix: ListenerName,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource:    configSources[f],
			RouteConfigName: RouteConfigName,
		}},
		HttpFilters: []*hcm.HttpFilter{routerFilter},
	}
	if f == ADS {
		return &listener.Listener{Name: ListenerName, ApiListener: &listener.ApiListener{ApiListener: mustAny(m)}}
	}
	m.CodecType = hcm.HttpConnectionManager_AUTO
	m.UpgradeConfigs = []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}}
	return &listener.Listener{
		Name: ListenerName,
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address:       "0.0.0.0",
			PortSpecifier: &core.SocketAddress_PortValue{PortValue: 8000},
		}}},
		FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{
			Name:       wellknown.HTTPConnectionManager,
			ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(m)},
		}}}},
	}
}

func hostPort(host string, port uint32) string {
	return net.JoinHostPort(host, strconv.FormatUint(uint64(port), 10))
}
