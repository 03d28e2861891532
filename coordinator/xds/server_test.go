package xds

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	sotwclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// startServer serves a Server on a loopback port until the test ends.
func startServer(t testing.TB, opts ...grpc.ServerOption) (*Server, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := NewServer(ctx, slog.New(slog.DiscardHandler))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(opts...)
	s.Register(g)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(lis)
	}()
	t.Cleanup(func() {
		cancel()
		g.Stop()
		<-done
	})
	return s, lis.Addr().String()
}

func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var (
	envoyNode = &core.Node{Id: "envoy-1", UserAgentName: "envoy"}
	grpcNode  = &core.Node{Id: "grpc-1", UserAgentName: "gRPC Go"}
	// adsEnvoyNode is Envoy on dhvisor's own ADS bootstrap.
	adsEnvoyNode = &core.Node{Id: "envoy-2", UserAgentName: "envoy", Metadata: &structpb.Struct{
		Fields: map[string]*structpb.Value{FlavourMetadataKey: structpb.NewStringValue("ads")},
	}}
)

// checkServed says whether the resources on the wire are the ones Build
// makes for the flavour.
func checkServed(t *testing.T, what string, got []*anypb.Any, want *cache.Snapshot, typeURL string) {
	t.Helper()
	wantRes := want.GetResources(typeURL)
	if len(got) != len(wantRes) {
		t.Errorf("%s: %d resources, want %d", what, len(got), len(wantRes))
	}
	for _, a := range got {
		if a.GetTypeUrl() != typeURL {
			t.Errorf("%s: a %s", what, a.GetTypeUrl())
			continue
		}
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		name := cache.GetResourceName(m)
		if w, ok := wantRes[name]; !ok || !proto.Equal(m, w) {
			t.Errorf("%s: %s differs from what Build makes", what, name)
		}
	}
}

// onlyResources is snap with only the named resources of type typ.
func onlyResources(snap *cache.Snapshot, typ string, names ...string) *cache.Snapshot {
	out := *snap
	t := cache.GetResponseType(typ)
	items := map[string]types.ResourceWithTTL{}
	for _, n := range names {
		if r, ok := snap.Resources[t].Items[n]; ok {
			items[n] = r
		}
	}
	out.Resources[t] = cache.Resources{Items: items}
	return &out
}

func TestADSClientsGetTheirFlavour(t *testing.T) {
	s, addr := startServer(t)
	m := importedModel()
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	conn := dial(t, addr)
	types := []string{resource.ClusterType, resource.EndpointType, resource.RouteType, resource.ListenerType}
	for _, tc := range []struct {
		name string
		node *core.Node
		want Flavour
	}{
		{"envoy", envoyNode, Classic},
		{"envoy on an ADS bootstrap", adsEnvoyNode, ADS},
		{"grpc-go", grpcNode, ADS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			clients := map[string]sotwclient.ADSClient{}
			for _, typ := range types {
				c := sotwclient.NewADSClient(ctx, tc.node, typ)
				if err := c.InitConnect(conn); err != nil {
					t.Fatal(err)
				}
				resp, err := c.Fetch()
				if err != nil {
					t.Fatalf("%s: %v", typ, err)
				}
				checkServed(t, typ, resp.Resources, mustBuild(t, m, tc.want), typ)
				if err := c.Ack(); err != nil {
					t.Fatal(err)
				}
				clients[typ] = c
			}

			// A new worker: new cluster, endpoints and routes, the same listener.
			m2 := importedModel()
			m2.Workers = append(m2.Workers, Worker{Name: "worker_3", Prefix: "/worker/q3", Host: "10.0.0.4", Port: 24003, Node: "query3", HTTP2: true})
			if err := s.Update(m2); err != nil {
				t.Fatal(err)
			}
			for _, typ := range types[:3] {
				resp, err := clients[typ].Fetch()
				if err != nil {
					t.Fatalf("%s after Update: %v", typ, err)
				}
				want := mustBuild(t, m2, tc.want)
				if typ == resource.EndpointType {
					// Endpoints are not full state: only the new
					// worker's are sent.
					want = onlyResources(want, typ, WorkerCluster("worker_3"))
				}
				checkServed(t, typ+" after Update", resp.Resources, want, typ)
				if err := clients[typ].Ack(); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Update(m); err != nil { // back, for the next client
				t.Fatal(err)
			}
		})
	}
}

// Envoy on Deephaven's bootstrap: CDS on its own stream, then EDS and RDS
// by name, each from the api_config_source the clusters and listener name.
func TestClassicStreamsPerType(t *testing.T) {
	s, addr := startServer(t)
	if err := s.Update(importedModel()); err != nil {
		t.Fatal(err)
	}
	conn := dial(t, addr)
	ctx := testCtx(t)
	want := mustBuild(t, importedModel(), Classic)

	cds, err := clusterservice.NewClusterDiscoveryServiceClient(conn).StreamClusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cds.Send(&discovery.DiscoveryRequest{Node: envoyNode}); err != nil {
		t.Fatal(err)
	}
	cdsResp, err := cds.Recv()
	if err != nil {
		t.Fatal(err)
	}
	checkServed(t, "CDS stream", cdsResp.GetResources(), want, resource.ClusterType)
	for _, a := range cdsResp.GetResources() {
		c := &cluster.Cluster{}
		if err := a.UnmarshalTo(c); err != nil {
			t.Fatal(err)
		}
		if c.GetType() == cluster.Cluster_EDS {
			if src := c.GetEdsClusterConfig().GetEdsConfig().GetApiConfigSource(); src.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != XDSClusterName {
				t.Errorf("cluster %s: eds_config %v", c.GetName(), c.GetEdsClusterConfig().GetEdsConfig())
			}
		}
	}
	eds := []string{ServiceCluster(webAPI), WorkerCluster("worker_1")}

	edsStream, err := endpointservice.NewEndpointDiscoveryServiceClient(conn).StreamEndpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := edsStream.Send(&discovery.DiscoveryRequest{Node: envoyNode, ResourceNames: eds}); err != nil {
		t.Fatal(err)
	}
	edsResp, err := edsStream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range edsResp.GetResources() {
		m, _ := a.UnmarshalNew()
		got = append(got, cache.GetResourceName(m))
	}
	if slices.Sort(got); !slices.Equal(got, eds) {
		t.Errorf("EDS for %v: %v", eds, got)
	}

	rds, err := routeservice.NewRouteDiscoveryServiceClient(conn).StreamRoutes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rds.Send(&discovery.DiscoveryRequest{Node: envoyNode, ResourceNames: []string{RouteConfigName}}); err != nil {
		t.Fatal(err)
	}
	rdsResp, err := rds.Recv()
	if err != nil {
		t.Fatal(err)
	}
	checkServed(t, "RDS stream", rdsResp.GetResources(), want, resource.RouteType)

	// Acknowledged, each stream waits for its type's next version.
	ack := func(str interface {
		Send(*discovery.DiscoveryRequest) error
	}, names []string, resp *discovery.DiscoveryResponse) {
		t.Helper()
		if err := str.Send(&discovery.DiscoveryRequest{ResourceNames: names, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	ack(cds, nil, cdsResp)
	ack(edsStream, eds, edsResp)
	ack(rds, []string{RouteConfigName}, rdsResp)
	cdsGot, rdsGot := make(chan error, 1), make(chan error, 1)
	go func() { _, err := cds.Recv(); cdsGot <- err }()
	go func() { _, err := rds.Recv(); rdsGot <- err }()

	// An endpoint change reaches the EDS stream only.
	before := s.Status()
	m := importedModel()
	m.Services[0].Endpoints[0].Port = 8124
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	if edsResp, err = edsStream.Recv(); err != nil {
		t.Fatal(err)
	}
	// Only the load assignment that changed: Envoy keeps the others.
	checkServed(t, "EDS after an endpoint change", edsResp.GetResources(), onlyResources(mustBuild(t, m, Classic), resource.EndpointType, eds[0]), resource.EndpointType)
	if edsResp.GetVersionInfo() != s.Status().Versions[Classic][resource.EndpointType] {
		t.Errorf("EDS version %s, status says %s", edsResp.GetVersionInfo(), s.Status().Versions[Classic][resource.EndpointType])
	}
	select {
	case err := <-cdsGot:
		t.Errorf("CDS stream got a response to an endpoint change (%v)", err)
	case err := <-rdsGot:
		t.Errorf("RDS stream got a response to an endpoint change (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	st := s.Status()
	for _, typ := range []string{resource.ClusterType, resource.RouteType, resource.ListenerType} {
		if st.Versions[Classic][typ] != before.Versions[Classic][typ] {
			t.Errorf("after an endpoint change, %s version %s, before %s", typ, st.Versions[Classic][typ], before.Versions[Classic][typ])
		}
	}
}

func TestDeltaADS(t *testing.T) {
	s, addr := startServer(t)
	m := clusterModel()
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	conn := dial(t, addr)
	ctx := testCtx(t)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	types := []string{resource.ClusterType, resource.EndpointType, resource.RouteType, resource.ListenerType}
	for _, typ := range types {
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: grpcNode, TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
	}
	// recv gathers one response per type, acknowledging each.
	recv := func(n int) map[string]*discovery.DeltaDiscoveryResponse {
		t.Helper()
		out := map[string]*discovery.DeltaDiscoveryResponse{}
		for len(out) < n {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			out[resp.GetTypeUrl()] = resp
			if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	want := mustBuild(t, m, ADS)
	for typ, resp := range recv(len(types)) {
		var got []*anypb.Any
		for _, r := range resp.GetResources() {
			if r.GetVersion() != want.GetVersionMap(typ)[r.GetName()] {
				t.Errorf("%s %s: version %s, want %s", typ, r.GetName(), r.GetVersion(), want.GetVersionMap(typ)[r.GetName()])
			}
			got = append(got, r.GetResource())
		}
		checkServed(t, "delta "+typ, got, want, typ)
	}

	names := func(resp *discovery.DeltaDiscoveryResponse) []string {
		var out []string
		for _, r := range resp.GetResources() {
			out = append(out, r.GetName())
		}
		return out
	}
	m.Workers = append(m.Workers, Worker{Name: "worker_3", Prefix: "/worker/q3", Host: "10.0.0.4", Port: 24003, Node: "query3", HTTP2: true})
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	got := recv(3)
	for typ, want := range map[string][]string{
		resource.ClusterType:  {WorkerCluster("worker_3")},
		resource.EndpointType: {WorkerCluster("worker_3")},
		resource.RouteType:    {RouteConfigName},
	} {
		if g := names(got[typ]); !slices.Equal(g, want) || len(got[typ].GetRemovedResources()) != 0 {
			t.Errorf("delta %s after a worker registered: %v removed %v, want %v", typ, g, got[typ].GetRemovedResources(), want)
		}
	}

	m.Workers = m.Workers[1:] // worker_2
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	got = recv(3)
	for _, typ := range []string{resource.ClusterType, resource.EndpointType} {
		if g := got[typ]; len(g.GetResources()) != 0 || !slices.Equal(g.GetRemovedResources(), []string{WorkerCluster("worker_2")}) {
			t.Errorf("delta %s after a worker left: %v removed %v", typ, names(g), g.GetRemovedResources())
		}
	}
}

// A client that rejects a response must not get it again until something
// changes: go-control-plane alone would resend it at once, forever.
func TestRejectedResponseIsNotResent(t *testing.T) {
	s, addr := startServer(t)
	if err := s.Update(clusterModel()); err != nil {
		t.Fatal(err)
	}
	conn := dial(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	c := sotwclient.NewADSClient(ctx, grpcNode, resource.ClusterType)
	if err := c.InitConnect(conn); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := c.Nack("cluster svc_x: no certificate provider"); err != nil {
		t.Fatal(err)
	}
	responses := make(chan int, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			resp, err := c.Fetch()
			if err != nil {
				return
			}
			responses <- len(resp.Resources)
		}
	}()
	defer func() { cancel(); <-done }()

	select {
	case <-responses:
		t.Fatal("the rejected response came again")
	case <-time.After(300 * time.Millisecond):
	}
	if st := s.Status(); st.Rejected != 1 || !strings.Contains(st.LastRejection, "no certificate provider") {
		t.Errorf("status: %d rejections, last %q", st.Rejected, st.LastRejection)
	}

	m := clusterModel()
	m.Services[0].TLS = true
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-responses:
		if want := len(mustBuild(t, m, ADS).GetResources(resource.ClusterType)); n != want {
			t.Errorf("new version with %d clusters, want %d", n, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no new version after a rejection")
	}
}

func TestUpdateSkipsUnchangedModel(t *testing.T) {
	s, _ := startServer(t)
	m := clusterModel()
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	first := s.Status()
	slices.Reverse(m.Workers)
	m.Workers[0].Kind = "Legacy" // not part of any resource, but of the model
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	slices.Reverse(m.Services)
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	st := s.Status()
	if st.Built.Equal(first.Built) {
		t.Errorf("a changed model (a worker's kind) was not built")
	}
	third := s.Status()
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); !st.Built.Equal(third.Built) {
		t.Errorf("an unchanged model was built again")
	}
	for _, f := range flavours {
		for typ, v := range st.Versions[f] {
			if first.Versions[f][typ] != v {
				t.Errorf("%s %s: version %s, first %s", f, typ, v, first.Versions[f][typ])
			}
		}
	}
	if st.Clusters == 0 || st.LoadAssignments == 0 || st.Routes == 0 || st.BuildTime <= 0 {
		t.Errorf("status %+v", st)
	}
	// The first build made every worker; the later ones reused them.
	if first.FullBuildTime != first.BuildTime || st.FullBuildTime != first.FullBuildTime || st.NewWorkers != 0 {
		t.Errorf("full build %v then %v (builds %v, %v; %d new)", first.FullBuildTime, st.FullBuildTime, first.BuildTime, st.BuildTime, st.NewWorkers)
	}
	if n := len(s.Routes()); n != st.Routes {
		t.Errorf("%d routes served, status says %d", n, st.Routes)
	}

	bad := clusterModel()
	bad.Workers = append(bad.Workers, bad.Workers[0])
	if err := s.Update(bad); err == nil {
		t.Error("a model with a worker twice was served")
	}
	if s.Status().Versions[ADS][resource.ClusterType] != st.Versions[ADS][resource.ClusterType] {
		t.Error("a refused model changed the versions")
	}
}

// An update reaches only the caches whose resources it changes: a client
// of another type gets nothing, and the status shows which versions moved.
func TestUpdatesReachOnlyChangedTypes(t *testing.T) {
	all := []string{resource.ClusterType, resource.EndpointType, resource.RouteType, resource.ListenerType}
	for _, tc := range []struct {
		name    string
		change  func(m *Model)
		changed []string // the types whose version changes
	}{
		{"same model", func(*Model) {}, nil},
		{"shuffled", func(m *Model) {
			slices.Reverse(m.Services)
			slices.Reverse(m.Workers)
			slices.Reverse(m.ExtraRoutes)
			slices.Reverse(m.Services[1].Endpoints)
		}, nil},
		{"worker nonce", func(m *Model) { m.Workers[0].Nonce = "other" }, nil},
		{"endpoint port", func(m *Model) { m.Services[0].Endpoints[0].Port++ }, []string{resource.EndpointType}},
		{"worker port", func(m *Model) { m.Workers[0].Port++ }, []string{resource.EndpointType}},
		{"worker added", func(m *Model) {
			m.Workers = append(m.Workers, Worker{Name: "worker_3", Prefix: "/worker/q3", Host: "10.0.0.4", Port: 1, HTTP2: true})
		}, []string{resource.ClusterType, resource.EndpointType, resource.RouteType}},
		{"worker removed", func(m *Model) { m.Workers = m.Workers[1:] }, []string{resource.ClusterType, resource.EndpointType, resource.RouteType}},
		{"worker prefix", func(m *Model) { m.Workers[0].Prefix = "/worker/other" }, []string{resource.RouteType}},
		{"service TLS", func(m *Model) { m.Services[0].TLS = true }, []string{resource.ClusterType}},
		{"extra rewrite", func(m *Model) { m.ExtraRoutes[0].PrefixRewrite = "/x/" }, []string{resource.RouteType}},
		{"extra host", func(m *Model) { m.ExtraRoutes[0].Host = "other.example.com" }, []string{resource.ClusterType}},
	} {
		s := NewServer(t.Context(), slog.New(slog.DiscardHandler))
		for _, f := range flavours {
			s.want(f)
		}
		if err := s.Update(clusterModel()); err != nil {
			t.Fatal(err)
		}
		before := s.Status()
		m := clusterModel()
		tc.change(&m)
		if err := s.Update(m); err != nil {
			t.Fatal(err)
		}
		after := s.Status()
		for _, f := range flavours {
			for _, typ := range all {
				if changed := before.Versions[f][typ] != after.Versions[f][typ]; changed != slices.Contains(tc.changed, typ) {
					t.Errorf("%s, %s: %s version changed %v, want %v", tc.name, f, typ, changed, !changed)
				}
			}
		}
	}
}

// A client that asks before the first model waits for it: an empty answer
// would make Envoy drop every cluster and route it has.
func TestClientsWaitForTheFirstModel(t *testing.T) {
	s, addr := startServer(t)
	ctx := testCtx(t)
	c := sotwclient.NewADSClient(ctx, envoyNode, resource.ClusterType)
	if err := c.InitConnect(dial(t, addr)); err != nil {
		t.Fatal(err)
	}
	got := make(chan int, 1)
	go func() {
		resp, err := c.Fetch()
		if err != nil {
			close(got)
			return
		}
		got <- len(resp.Resources)
	}()
	select {
	case n := <-got:
		t.Fatalf("answered before the first model: %d clusters", n)
	case <-time.After(300 * time.Millisecond):
	}
	m := clusterModel()
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-got:
		if want := len(mustBuild(t, m, Classic).GetResources(resource.ClusterType)); n != want {
			t.Errorf("%d clusters after the first model, want %d", n, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer after the first model")
	}
}

// A version is never reused by another server (a restarted coordinator or
// another replica): a client that reconnects with the version it had gets
// the server's resources, even when the other server had the same count
// of updates.
func TestReconnectingClientGetsCurrentResources(t *testing.T) {
	old, oldAddr := startServer(t)
	cur, curAddr := startServer(t)
	m := clusterModel()
	if err := old.Update(m); err != nil {
		t.Fatal(err)
	}
	m.Workers[0].Port = 1 // changed while the client was away
	if err := cur.Update(m); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	names := []string{WorkerCluster("worker_1")}
	first := func(addr, version string) *discovery.DiscoveryResponse {
		t.Helper()
		str, err := endpointservice.NewEndpointDiscoveryServiceClient(dial(t, addr)).StreamEndpoints(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := str.Send(&discovery.DiscoveryRequest{Node: envoyNode, ResourceNames: names, VersionInfo: version}); err != nil {
			t.Fatal(err)
		}
		resp, err := str.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	had := first(oldAddr, "")
	if old.Status().Versions[Classic][resource.EndpointType] == cur.Status().Versions[Classic][resource.EndpointType] {
		t.Fatal("two servers gave the same version")
	}
	resp := first(curAddr, had.GetVersionInfo())
	checkServed(t, "EDS after reconnecting", resp.GetResources(), onlyResources(mustBuild(t, m, Classic), resource.EndpointType, names...), resource.EndpointType)
}

// A flavour's clusters and listener are built once a client of that
// flavour asks for them, not before: Deephaven's Envoy needs only the
// classic ones, grpc-go only the ADS ones.
func TestFlavourBuiltWhenAskedFor(t *testing.T) {
	s, addr := startServer(t)
	m := clusterModel()
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	if len(s.b.flavours) != 0 {
		t.Fatalf("flavours %v built before any client asked", s.b.flavours)
	}
	c := sotwclient.NewADSClient(testCtx(t), envoyNode, resource.ClusterType)
	if err := c.InitConnect(dial(t, addr)); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	checkServed(t, "CDS", resp.Resources, mustBuild(t, m, Classic), resource.ClusterType)
	if !slices.Equal(s.b.flavours, []Flavour{Classic}) {
		t.Errorf("flavours %v built, want only classic", s.b.flavours)
	}
	// Later changes build the classic flavour only.
	m.Workers = append(m.Workers, Worker{Name: "worker_3", Prefix: "/worker/q3", Host: "10.0.0.4", Port: 24003, Node: "query3", HTTP2: true})
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.Versions[ADS][resource.ClusterType] != s.prefix+"0" || st.Versions[Classic][resource.ClusterType] != s.prefix+"2" {
		t.Errorf("cluster versions %s (ads), %s (classic); want ads never served", st.Versions[ADS][resource.ClusterType], st.Versions[Classic][resource.ClusterType])
	}
}
