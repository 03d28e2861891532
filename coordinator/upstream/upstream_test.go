package upstream

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/internal/config"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
	"github.com/dhvisor/dhvisor/test/cfgserverxds"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var web = cfgserverxds.Service{Name: "web_api_service", Host: "127.0.0.1", Port: 8123}

func startCfgServer(t *testing.T, addr string) *cfgserverxds.Server {
	t.Helper()
	s, err := cfgserverxds.Start(addr, web, cfgserverxds.Service{Name: "authentication_server", Host: "127.0.0.1", Port: 9031, HTTP2: true, Prefixes: []string{"/io.deephaven.proto.auth.grpc.AuthApi/"}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// next waits for the subscription's next event.
func next(t *testing.T, events <-chan Event, errc <-chan error) Event {
	t.Helper()
	select {
	case ev := <-events:
		return ev
	case err := <-errc:
		t.Fatalf("subscription ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return Event{}
}

// The subscription speaks xDS as Envoy does: CDS on every cluster and RDS
// on rds_config, each on its own stream, the node on each stream's first
// request, every response acknowledged with its version and nonce, a
// response it cannot take refused with the version it has and why.
func TestSubscriptionAcksAndNacks(t *testing.T) {
	cs := startCfgServer(t, "127.0.0.1:0")
	defer cs.Stop()
	if err := cs.Set([]cfgserverxds.Worker{{ID: "w1", Prefix: "/worker/w1", Host: "127.0.0.1", Port: 24001}}); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(cs.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	node := &core.Node{Id: "dhcoord-c1", Cluster: "deephaven"}
	sub := &Subscription{Conn: conn, RouteConfig: "rds_config", Node: node}
	events, errc := make(chan Event), make(chan error, 1)
	go func() { errc <- sub.Run(ctx, events) }()
	defer func() { cancel(); <-errc }()

	ev := next(t, events, errc)
	if ev.Resources == nil || len(ev.Resources.Clusters) != 3 || ev.Resources.Routes["rds_config"] == nil || ev.Versions != "clusters 2, routes 2" {
		t.Fatalf("first event: %+v", ev)
	}
	if ws, _ := Extract(*ev.Resources); len(ws) != 1 || ws[0].Name != "w1" {
		t.Fatalf("workers: %v", ws)
	}
	// A cluster Envoy would refuse (no name).
	bad := []types.Resource{&cluster.Cluster{}}
	if err := cs.SetResources(bad, nil); err != nil {
		t.Fatal(err)
	}
	for ev = next(t, events, errc); ev.Refused == nil; ev = next(t, events, errc) {
	}
	if !strings.Contains(ev.Refused.Error(), `CDS version "3" refused`) {
		t.Errorf("refusal: %v", ev.Refused)
	}
	if err := cs.Set(nil); err != nil {
		t.Fatal(err)
	}
	for ev = next(t, events, errc); ev.Resources == nil || len(ev.Resources.Clusters) != 2; ev = next(t, events, errc) {
	}

	type seen struct{ first, ack, nack bool }
	got := map[string]*seen{resource.ClusterType: {}, resource.RouteType: {}}
	for _, r := range cs.Requests() {
		s := got[r.TypeURL]
		if s == nil {
			t.Fatalf("request of type %s", r.TypeURL)
		}
		switch {
		case r.Nonce == "":
			s.first = r.Node.GetId() == node.Id && r.Version == ""
			if r.TypeURL == resource.RouteType && (len(r.Names) != 1 || r.Names[0] != "rds_config") {
				t.Errorf("RDS asked for %v", r.Names)
			}
		case r.Error != "":
			// The NACK names the version accepted before.
			s.nack = r.Version == "2" && strings.Contains(r.Error, "resource 0")
		case r.Version != "":
			s.ack = true
		}
	}
	if c := got[resource.ClusterType]; !c.first || !c.ack || !c.nack {
		t.Errorf("CDS requests %+v: %+v", cs.Requests(), c)
	}
	if r := got[resource.RouteType]; !r.first || !r.ack {
		t.Errorf("RDS requests: %+v", r)
	}
}

// testRaft applies commands to a state machine at once, as a one-node
// raft would.
type testRaft struct {
	mu    sync.Mutex
	f     *fsm.FSM
	index uint64
}

func (r *testRaft) propose(_ context.Context, cmd *pb.Command) (any, error) {
	data, err := fsm.Encode(cmd)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.index++
	res := r.f.Apply(&raft.Log{Index: r.index, Type: raft.LogCommand, Data: data})
	if err, ok := res.(error); ok {
		return nil, err
	}
	return res, nil
}

func (r *testRaft) store(ctx context.Context, who string, ws *pb.WorkerSet) (bool, error) {
	_, err := r.propose(ctx, &pb.Command{Who: who, AtUnixMs: time.Now().UnixMilli(), Cmd: &pb.Command_WorkerSet{WorkerSet: ws}})
	return err == nil, err
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
	}
}

// The importer follows the configuration server: its workers as one set
// that each update replaces (host names resolved), kept for the grace
// while the server is down, withdrawn after, back when it is.
func TestImporter(t *testing.T) {
	cs := startCfgServer(t, "127.0.0.1:0")
	addr := cs.Addr()
	if err := cs.Set([]cfgserverxds.Worker{
		{ID: "w1", Prefix: "/worker/w1", Host: "127.0.0.1", Port: 24001},
		{ID: "w2", Prefix: "/worker/w2", Host: "localhost", Port: 24002, TLS: true},
	}); err != nil {
		t.Fatal(err)
	}
	tr := &testRaft{f: fsm.New()}
	const grace = 1500 * time.Millisecond
	im := &Importer{
		Upstream: config.XDSUpstream{Address: addr, Plaintext: true, RouteConfig: "rds_config", NodeID: "dhcoord-c1", NodeCluster: "deephaven"},
		Grace:    grace, FSM: tr.f, Store: tr.store, Propose: tr.propose, Self: "coordinator:c1", Log: slog.New(slog.DiscardHandler),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); im.Run(ctx) }()
	defer func() { cancel(); <-done }()

	set := func() *pb.WorkerSet { return tr.f.WorkerSet(addr, fsm.UpstreamDispatcher) }
	state := func() string { return tr.f.Upstream().GetState() }
	waitFor(t, "two workers imported, live", func() bool { return len(set().GetWorkers()) == 2 && state() == pb.UpstreamLive })
	ws := set()
	if w := ws.Workers[1]; w.Name != "w2" || w.EnvoyPrefix != "/worker/w2" || w.Host != "127.0.0.1" || w.Port != 24002 || !w.Tls || w.Protocol != "http2" || ws.Upstream != addr {
		t.Errorf("imported %v", ws)
	}
	if u := tr.f.Upstream(); u.Workers != 2 || u.Version != "clusters 2, routes 2" {
		t.Errorf("record %v", u)
	}

	// An update replaces the set whole.
	if err := cs.Set([]cfgserverxds.Worker{{ID: "w3", Prefix: "/worker/w3", Host: "127.0.0.1", Port: 24003}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "w3 alone", func() bool { ws := set(); return len(ws.GetWorkers()) == 1 && ws.Workers[0].Name == "w3" })

	// Down: kept for the grace from the loss, then withdrawn.
	cs.Stop()
	lost := time.Now()
	waitFor(t, "stale", func() bool { return state() == pb.UpstreamStale })
	u, ws := tr.f.Upstream(), set()
	if ws == nil || ws.LeaseExpiresUnixMs != u.WithdrawUnixMs || u.WithdrawUnixMs != u.HeardUnixMs+grace.Milliseconds() || u.Error == "" {
		t.Fatalf("stale: record %v, set %v", u, ws)
	}
	waitFor(t, "withdrawn", func() bool { return state() == pb.UpstreamWithdrawn })
	if set() != nil {
		t.Fatal("withdrawn, but the set is still there")
	}
	if d := time.Since(lost); d < grace {
		t.Errorf("withdrawn %v after the loss, before the grace (%v) ended", d, grace)
	}

	// Back: live again, with what it serves now.
	cs = startCfgServer(t, addr)
	defer cs.Stop()
	if err := cs.Set([]cfgserverxds.Worker{{ID: "w4", Prefix: "/worker/w4", Host: "127.0.0.1", Port: 24004}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "live with w4", func() bool {
		ws := set()
		return state() == pb.UpstreamLive && len(ws.GetWorkers()) == 1 && ws.Workers[0].Name == "w4"
	})
}

// A configuration server's route to a link-local or loopback address is
// refused as a registration's is; a host name is checked once resolved.
func TestImporterPermitsOnlyWorkerAddresses(t *testing.T) {
	im := &Importer{Permit: func(a netip.Addr) error {
		if a.IsLoopback() || a.IsLinkLocalUnicast() {
			return errors.New("is not a worker's address")
		}
		return nil
	}}
	ws := []*agentpb.Worker{
		{Name: "meta", EnvoyPrefix: "/worker/meta", Host: "169.254.169.254"},
		{Name: "ok", EnvoyPrefix: "/worker/ok", Host: "10.0.0.7"},
		{Name: "local", EnvoyPrefix: "/worker/local", Host: "localhost"},
	}
	out, skipped := im.resolve(context.Background(), ws, nil)
	if len(out) != 1 || out[0].Name != "ok" {
		t.Fatalf("kept %v, want only ok", out)
	}
	if len(skipped) != 2 || !strings.Contains(skipped[0], "169.254.169.254 is not a worker's address") || !strings.Contains(skipped[1], "127.0.0.1 is not a worker's address") {
		t.Fatalf("skipped %q", skipped)
	}
}
