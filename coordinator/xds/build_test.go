package xds

import (
	"slices"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/dhvisor/dhvisor/internal/config"
)

func mustBuild(t testing.TB, m Model, f Flavour) *cache.Snapshot {
	t.Helper()
	snap, err := Build(m, f)
	if err != nil {
		t.Fatalf("Build(%s): %v", f, err)
	}
	return snap
}

func TestRoutesOrderAndMatches(t *testing.T) {
	views, err := Routes(clusterModel())
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ match, rewrite, cluster, endpoints string }
	want := []row{
		{"prefix / header envoy-prefix=/worker/q1", "", "worker_worker_1", "10.0.0.2:24001"},
		{"prefix / header envoy-prefix=/worker/q2", "", "worker_worker_2", "10.0.0.3:24002"},
		{"prefix /worker/worker_1/", "/", "worker_worker_1", "10.0.0.2:24001"},
		{"prefix /worker/worker_2/", "/", "worker_worker_2", "10.0.0.3:24002"},
		// Then the longest match first, services' and extra routes alike.
		{"prefix /io.deephaven.proto.controller.grpc.ControllerApi/", "", "svc_iris_controller", "10.0.0.1:20126"},
		{"prefix /io.deephaven.proto.auth.grpc.AuthApi/", "", "svc_authentication_server", "infra.example.com:9031 query2.example.com:9031"},
		{"prefix /docs/api/", "/api/", "extra_docs", "10.0.0.9:80"},
		{"prefix /grafana/", "/", "extra_grafana", "grafana.example.com:443"},
		{"path /grafana", "/", "extra_grafana", "grafana.example.com:443"},
		{"prefix /iriside", "", "svc_web_api_service", "10.0.0.1:8123"},
		{"prefix /iris/", "", "svc_web_api_service", "10.0.0.1:8123"},
		{"prefix /acl/", "", "svc_db_acl_write_server", ""},
		{"prefix /", "", "svc_web_api_service", "10.0.0.1:8123"},
	}
	var got []row
	for _, v := range views {
		got = append(got, row{v.Match(), v.PrefixRewrite, v.Cluster, strings.Join(v.Endpoints, " ")})
	}
	if !slices.Equal(got, want) {
		t.Errorf("routes:\n got %q\nwant %q", got, want)
	}

	// The views are read from the RDS resource itself.
	rc := mustBuild(t, clusterModel(), Classic).GetResources(resource.RouteType)[RouteConfigName].(*route.RouteConfiguration)
	if n := len(rc.GetVirtualHosts()[0].GetRoutes()); n != len(views) {
		t.Errorf("rds_config has %d routes, the views %d", n, len(views))
	}
	for _, r := range rc.GetVirtualHosts()[0].GetRoutes() {
		if d := r.GetRoute().GetTimeout(); d == nil || d.AsDuration() != 0 {
			t.Errorf("route %v: timeout %v, want 0s (no timeout)", r.GetMatch(), d)
		}
	}
}

func TestExtraRouteMatchesWithAndWithoutSlash(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		exact  bool
		want   []string
	}{
		{"/grafana", false, []string{"prefix /grafana/", "path /grafana"}},
		{"/grafana/", false, []string{"prefix /grafana/", "path /grafana"}},
		{"/grafana", true, []string{"prefix /grafana"}},
		{"/grafana/", true, []string{"prefix /grafana/"}},
	} {
		m := Model{ExtraRoutes: []config.ExtraRoute{{Name: "g", Host: "g.example.com", Port: 80, Prefix: tc.prefix, PrefixRewrite: "/"}}}
		m.ExtraRoutes[0].ExactPrefix = tc.exact
		views, err := Routes(m)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, v := range views {
			if v.Cluster == ExtraCluster("g") {
				got = append(got, v.Match())
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("prefix %q exact %v: %q, want %q", tc.prefix, tc.exact, got, tc.want)
		}
	}
}

func TestClusterOptions(t *testing.T) {
	m := clusterModel()
	m.Workers = append(m.Workers, Worker{Name: "tls_worker", Prefix: "/worker/t", Host: "q3.example.com", Port: 24003, Node: "query3", TLS: true, HTTP2: true})
	for _, f := range flavours {
		clusters := mustBuild(t, m, f).GetResources(resource.ClusterType)
		for _, tc := range []struct {
			name       string
			typ        cluster.Cluster_DiscoveryType
			http2, tls bool
			sni        string
		}{
			{ServiceCluster(webAPI), cluster.Cluster_EDS, false, false, ""},
			{ServiceCluster(auth), cluster.Cluster_EDS, true, true, ""}, // two hosts: auto_host_sni only
			{ServiceCluster(controller), cluster.Cluster_EDS, true, false, ""},
			{ServiceCluster(aclWriter), cluster.Cluster_EDS, false, false, ""}, // absent from the model
			{ServiceCluster("configuration_server"), cluster.Cluster_EDS, true, true, ""},
			{WorkerCluster("worker_1"), cluster.Cluster_EDS, true, false, ""},
			{WorkerCluster("tls_worker"), cluster.Cluster_EDS, true, true, "q3.example.com"},
			{ExtraCluster("grafana"), cluster.Cluster_LOGICAL_DNS, false, true, "grafana.example.com"},
			{ExtraCluster("docs"), cluster.Cluster_LOGICAL_DNS, false, false, ""},
		} {
			res, ok := clusters[tc.name]
			if !ok {
				t.Errorf("%s: no cluster %s", f, tc.name)
				continue
			}
			c := res.(*cluster.Cluster)
			if c.GetType() != tc.typ {
				t.Errorf("%s %s: type %v, want %v", f, tc.name, c.GetType(), tc.typ)
			}
			if c.GetConnectTimeout().AsDuration() <= 0 {
				t.Errorf("%s %s: no connect timeout", f, tc.name)
			}
			if tc.typ == cluster.Cluster_EDS {
				checkConfigSource(t, f, tc.name+" eds_config", c.GetEdsClusterConfig().GetEdsConfig())
			}

			opts, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
			if ok != tc.http2 {
				t.Errorf("%s %s: HTTP protocol options %v, want HTTP/2 %v", f, tc.name, ok, tc.http2)
			}
			if ok {
				po := &upstreamhttp.HttpProtocolOptions{}
				if err := opts.UnmarshalTo(po); err != nil || po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
					t.Errorf("%s %s: protocol options %v (%v), want explicit HTTP/2", f, tc.name, po, err)
				}
			}

			ts := c.GetTransportSocket()
			if (ts != nil) != tc.tls {
				t.Errorf("%s %s: transport socket %v, want TLS %v", f, tc.name, ts, tc.tls)
			}
			if ts != nil {
				up := &tlsv3.UpstreamTlsContext{}
				if ts.GetName() != wellknown.TransportSocketTLS || ts.GetTypedConfig().UnmarshalTo(up) != nil {
					t.Fatalf("%s %s: transport socket %v", f, tc.name, ts)
				}
				if up.GetSni() != tc.sni || !up.GetAutoHostSni() {
					t.Errorf("%s %s: sni %q auto_host_sni %v, want %q and true", f, tc.name, up.GetSni(), up.GetAutoHostSni(), tc.sni)
				}
			}
		}
	}
}

func checkConfigSource(t *testing.T, f Flavour, what string, cs *core.ConfigSource) {
	t.Helper()
	if cs.GetResourceApiVersion() != core.ApiVersion_V3 {
		t.Errorf("%s %s: resource_api_version %v", f, what, cs.GetResourceApiVersion())
	}
	switch f {
	case ADS:
		if cs.GetAds() == nil {
			t.Errorf("%s %s: %v, want ads", f, what, cs)
		}
	case Classic:
		api := cs.GetApiConfigSource()
		if api.GetApiType() != core.ApiConfigSource_GRPC || api.GetTransportApiVersion() != core.ApiVersion_V3 ||
			len(api.GetGrpcServices()) != 1 || api.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != XDSClusterName {
			t.Errorf("%s %s: %v, want api_config_source GRPC V3 via %s", f, what, cs, XDSClusterName)
		}
	}
}

func TestListeners(t *testing.T) {
	for _, f := range flavours {
		l, ok := mustBuild(t, clusterModel(), f).GetResources(resource.ListenerType)[ListenerName].(*listener.Listener)
		if !ok {
			t.Fatalf("%s: no listener %s", f, ListenerName)
		}
		m := &hcm.HttpConnectionManager{}
		switch f {
		case ADS:
			if l.GetAddress() != nil || l.GetApiListener().GetApiListener().UnmarshalTo(m) != nil {
				t.Fatalf("%s: %v, want an api_listener", f, l)
			}
		case Classic:
			sa := l.GetAddress().GetSocketAddress()
			if sa.GetAddress() != "0.0.0.0" || sa.GetPortValue() != 8000 || len(l.GetFilterChains()) != 1 {
				t.Fatalf("%s: %v, want 0.0.0.0:8000", f, l)
			}
			filter := l.GetFilterChains()[0].GetFilters()[0]
			if filter.GetName() != wellknown.HTTPConnectionManager || filter.GetTypedConfig().UnmarshalTo(m) != nil {
				t.Fatalf("%s: filter %v", f, filter)
			}
			if m.GetCodecType() != hcm.HttpConnectionManager_AUTO || len(m.GetUpgradeConfigs()) != 1 || m.GetUpgradeConfigs()[0].GetUpgradeType() != "websocket" {
				t.Errorf("%s: codec %v upgrades %v, want AUTO and websocket", f, m.GetCodecType(), m.GetUpgradeConfigs())
			}
		}
		if m.GetRds().GetRouteConfigName() != RouteConfigName {
			t.Errorf("%s: rds %v, want %s", f, m.GetRds(), RouteConfigName)
		}
		checkConfigSource(t, f, "rds config_source", m.GetRds().GetConfigSource())
		filters := m.GetHttpFilters()
		if len(filters) == 0 || filters[len(filters)-1].GetName() != wellknown.Router {
			t.Errorf("%s: http filters %v, want the router last", f, filters)
		}
	}
}

func TestEndpoints(t *testing.T) {
	m := clusterModel()
	m.Services = append(m.Services, Service{Name: "db_query_server", Endpoints: []Endpoint{
		{Node: "query1", Host: "10.0.0.2", Port: 1}, {Node: "query2", Host: "10.0.0.3", Port: 1},
		{Node: "query1", Host: "10.0.0.2", Port: 2}, {Node: "query1", Host: "10.0.0.2", Port: 1}, // a duplicate
	}})
	clas := mustBuild(t, m, ADS).GetResources(resource.EndpointType)
	for _, tc := range []struct {
		cluster string
		want    map[string][]uint32 // node → ports
		weights map[string]uint32
	}{
		{ServiceCluster("db_query_server"), map[string][]uint32{"query1": {1, 2}, "query2": {1}}, map[string]uint32{"query1": 2, "query2": 1}},
		{WorkerCluster("worker_1"), map[string][]uint32{"query1": {24001}}, map[string]uint32{"query1": 1}},
		{ServiceCluster(aclWriter), map[string][]uint32{}, nil},
		{ServiceCluster("configuration_server"), map[string][]uint32{}, nil},
	} {
		cla, ok := clas[tc.cluster].(*endpoint.ClusterLoadAssignment)
		if !ok {
			t.Errorf("no load assignment for %s", tc.cluster)
			continue
		}
		got := map[string][]uint32{}
		for _, loc := range cla.GetEndpoints() {
			node := loc.GetLocality().GetSubZone()
			if w := loc.GetLoadBalancingWeight().GetValue(); w == 0 || w != tc.weights[node] {
				t.Errorf("%s locality %s: weight %d, want %d", tc.cluster, node, w, tc.weights[node])
			}
			for _, ep := range loc.GetLbEndpoints() {
				if ep.GetHealthStatus() != core.HealthStatus_HEALTHY {
					t.Errorf("%s: endpoint %v not HEALTHY", tc.cluster, ep)
				}
				got[node] = append(got[node], ep.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue())
			}
		}
		if len(got) != len(tc.want) {
			t.Errorf("%s: endpoints %v, want %v", tc.cluster, got, tc.want)
		}
		for node, ports := range tc.want {
			if !slices.Equal(got[node], ports) {
				t.Errorf("%s: endpoints %v, want %v", tc.cluster, got, tc.want)
			}
		}
	}
}

func TestSnapshotsValidAndConsistent(t *testing.T) {
	for name, m := range map[string]Model{"empty": {}, "cluster": clusterModel(), "imported": importedModel(), "scale": scaleModel(300)} {
		for _, f := range flavours {
			snap := mustBuild(t, m, f)
			if err := consistent(snap, f); err != nil {
				t.Errorf("%s %s: %v", name, f, err)
			}
			if f == Classic {
				if err := snap.Consistent(); err != nil {
					t.Errorf("%s %s: Consistent: %v", name, f, err)
				}
			}
			for _, typ := range []string{resource.ClusterType, resource.EndpointType, resource.RouteType, resource.ListenerType} {
				for rn, r := range snap.GetResources(typ) {
					if err := r.(interface{ ValidateAll() error }).ValidateAll(); err != nil {
						t.Errorf("%s %s %s: %v", name, f, rn, err)
					}
				}
				if len(snap.GetVersionMap(typ)) != len(snap.GetResources(typ)) {
					t.Errorf("%s %s: version map of %s has %d entries for %d resources", name, f, typ, len(snap.GetVersionMap(typ)), len(snap.GetResources(typ)))
				}
			}
		}
	}
}

// rds_config's bytes are put together from its routes': they must read
// back as the whole configuration.
func TestRouteConfigBytes(t *testing.T) {
	for _, m := range []Model{{}, clusterModel(), scaleModel(100)} {
		b := builder{flavours: flavours}
		out, err := b.build(canonical(m))
		if err != nil {
			t.Fatal(err)
		}
		got := out.table.rds.wire
		rc, err := decode(got, resource.RouteType)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(rc.(*route.RouteConfiguration).GetVirtualHosts()[0].GetRoutes()); n != len(out.table.routes) {
			t.Errorf("%d workers: rds_config has %d routes, want %d", len(m.Workers), n, len(out.table.routes))
		}
		want := &route.RouteConfiguration{Name: RouteConfigName, VirtualHosts: []*route.VirtualHost{{Name: ListenerName, Domains: []string{"*"}}}}
		for _, e := range out.table.routes {
			r := &route.Route{}
			fromWire(e, r)
			want.VirtualHosts[0].Routes = append(want.VirtualHosts[0].Routes, r)
		}
		if !proto.Equal(rc, want) {
			t.Errorf("%d workers: rds_config reads back as %v, want %v", len(m.Workers), rc, want)
		}
	}
}

// consistent must catch what go-control-plane misses in an api_listener.
func TestConsistentChecksAPIListenerRoutes(t *testing.T) {
	snap := mustBuild(t, clusterModel(), ADS)
	for name, routes := range map[string][]types.Resource{
		"no routes":  nil,
		"other name": {&route.RouteConfiguration{Name: "other"}},
		"one more":   {&route.RouteConfiguration{Name: RouteConfigName}, &route.RouteConfiguration{Name: "other"}},
	} {
		broken := *snap
		broken.Resources[types.Route] = cache.NewResources("x", routes)
		if err := consistent(&broken, ADS); err == nil {
			t.Errorf("%s: consistent", name)
		}
	}
}

// The builder reuses the last build's workers: what it builds must be what
// a fresh build makes.
func TestIncrementalBuildMatchesFreshBuild(t *testing.T) {
	b := builder{flavours: flavours}
	steps := []struct {
		change func(m *Model)
		made   int // workers built anew
	}{
		{func(*Model) {}, 50},
		{func(m *Model) { m.Workers[3].Port = 1 }, 1},
		{func(m *Model) { m.Workers = m.Workers[:40] }, 0},
		{func(m *Model) { m.Workers[0].TLS = true; m.Workers[1].Host = "h.example.com" }, 2},
		{func(m *Model) { m.Workers = append(m.Workers, Worker{Name: "new", Host: "10.9.9.9", Port: 9}) }, 1},
	}
	m := scaleModel(50)
	for i, step := range steps {
		step.change(&m)
		got, err := b.build(canonical(m))
		if err != nil {
			t.Fatal(err)
		}
		if got.counts.NewWorkers != step.made || got.counts.Workers != len(m.Workers) {
			t.Errorf("step %d: made %d of %d workers, want %d of %d", i, got.counts.NewWorkers, got.counts.Workers, step.made, len(m.Workers))
		}
		for _, f := range flavours {
			want := mustBuild(t, m, f)
			for typ, es := range got.resources(f) {
				url, _ := cache.GetResponseTypeURL(typ)
				if len(es) != len(want.GetResources(url)) {
					t.Errorf("step %d %s %s: %d resources, fresh %d", i, f, url, len(es), len(want.GetResources(url)))
				}
				for _, e := range es {
					if v := cache.HashResource(e.bytes()); v != want.GetVersionMap(url)[e.name] {
						t.Errorf("step %d %s %s %s: incremental bytes differ from a fresh build's", i, f, url, e.name)
					}
				}
			}
		}
		if len(b.workers) != len(m.Workers) {
			t.Errorf("step %d: %d workers remembered, %d in the model", i, len(b.workers), len(m.Workers))
		}
	}
}

func TestBuildRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(m *Model)
		want   string
	}{
		{"duplicate worker", func(m *Model) { m.Workers = append(m.Workers, m.Workers[0]) }, "registered twice"},
		{"duplicate service", func(m *Model) { m.Services = append(m.Services, Service{Name: webAPI}) }, "listed twice"},
		{"duplicate extra route", func(m *Model) { m.ExtraRoutes = append(m.ExtraRoutes, m.ExtraRoutes[0]) }, "defined twice"},
		{"nameless worker", func(m *Model) { m.Workers[0].Name = "" }, "without a name"},
		{"hostless worker", func(m *Model) { m.Workers[0].Host = "" }, "worker worker_2"},
		{"extra route port", func(m *Model) { m.ExtraRoutes[0].Port = 0 }, "out of range"},
		{"hostless endpoint", func(m *Model) { m.Services[0].Endpoints[0].Host = "" }, "svc_web_api_service"},
	} {
		m := clusterModel()
		tc.change(&m)
		if _, err := Build(m, ADS); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

func TestFlavourOf(t *testing.T) {
	meta := func(v string) *structpb.Struct {
		return &structpb.Struct{Fields: map[string]*structpb.Value{FlavourMetadataKey: structpb.NewStringValue(v)}}
	}
	for _, tc := range []struct {
		name string
		node *core.Node
		want Flavour
	}{
		{"no node", nil, ADS},
		{"envoy", &core.Node{UserAgentName: "envoy"}, Classic},
		{"grpc-go", &core.Node{UserAgentName: "gRPC Go"}, ADS},
		{"envoy asking for ads", &core.Node{UserAgentName: "envoy", Metadata: meta("ads")}, ADS},
		{"grpc asking for classic", &core.Node{UserAgentName: "gRPC Go", Metadata: meta("classic")}, Classic},
		{"unknown flavour", &core.Node{UserAgentName: "envoy", Metadata: meta("other")}, Classic},
	} {
		if got := FlavourOf(tc.node); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

// Whichever marshalling marshal uses (vtprotobuf's generated code when
// built with the vtprotobuf tag, as make does, else reflection), every kind
// of resource a build makes must read back as what was marshalled.
func TestMarshalReadsBack(t *testing.T) {
	header := prefixRoute("/", "worker_w", "")
	header.Match.Headers = []*route.HeaderMatcher{{Name: PrefixHeader, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{
		StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: "/worker/w"}}}}}
	resources := []types.Resource{
		edsCluster(ADS, "worker_a", true, "w.example.com", true),
		edsCluster(Classic, "worker_b", false, "", false),
		dnsCluster("extra_x", "x.example.com", 443, true),
		loadAssignment("svc_a", []Endpoint{{Node: "n1", Host: "10.0.0.1", Port: 1}, {Node: "n1", Host: "h.example.com", Port: 2}, {Node: "n2", Host: "10.0.0.3", Port: 3}}),
		header,
		prefixRoute("/worker/w/", "worker_w", "/"),
		pathRoute("/grafana", "extra_grafana", "/"),
		httpListener(ADS),
		httpListener(Classic),
	}
	for _, res := range resources {
		e, err := newEntry(res)
		if err != nil {
			t.Fatal(err)
		}
		back := res.ProtoReflect().New().Interface()
		fromWire(e, back)
		if !proto.Equal(back, res) {
			t.Errorf("%T %s: read back as %v", res, e.name, back)
		}
	}
}

// Routes come from the services' definitions (roles/services.yaml): after
// the workers', the most specific match first, a service's before an extra
// route's of the same match; the default service's catch-all last, or none.
func TestServiceRoutes(t *testing.T) {
	extra := func(name, prefix string, exact bool) config.ExtraRoute {
		return config.ExtraRoute{Name: name, Host: "h.example.com", Port: 80, Prefix: prefix, PrefixRewrite: "/", ExactPrefix: exact}
	}
	for _, tc := range []struct {
		name     string
		services []Service
		extras   []config.ExtraRoute
		want     []string // match -> cluster
	}{
		{"a site's own service", []Service{{Name: "grafana_proxy", Routes: []string{"/grafana/"}}}, nil,
			[]string{"prefix /grafana/ -> svc_grafana_proxy"}},
		{"no default, no catch-all", []Service{{Name: "a", Routes: []string{"/a/"}}, {Name: "b"}}, nil,
			[]string{"prefix /a/ -> svc_a"}},
		{"the first default service by name", []Service{{Name: "b", Default: true}, {Name: "a", Default: true}}, nil,
			[]string{"prefix / -> svc_a"}},
		{"longest first, service before extra", []Service{{Name: "s", Routes: []string{"/x/", "/x/long/"}, Default: true}},
			[]config.ExtraRoute{extra("e", "/x/", true), extra("f", "/x/lo", true), extra("g", "/x/", false)},
			[]string{"prefix /x/long/ -> svc_s", "prefix /x/lo -> extra_f", "prefix /x/ -> svc_s", "prefix /x/ -> extra_e", "prefix /x/ -> extra_g", "path /x -> extra_g", "prefix / -> svc_s"}},
	} {
		views, err := Routes(Model{Services: tc.services, ExtraRoutes: tc.extras})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, v := range views {
			got = append(got, v.Match()+" -> "+v.Cluster)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}
