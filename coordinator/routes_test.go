package coordinator

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/xds"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/extraroutes"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func apply(t testing.TB, f *fsm.FSM, index uint64, cmd *pb.Command) {
	t.Helper()
	data, err := fsm.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if err, ok := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data}).(error); ok {
		t.Fatal(err)
	}
}

func routeMatches(srv *xds.Server) []string {
	var out []string
	for _, r := range srv.Routes() {
		out = append(out, r.Match()+" -> "+r.Cluster)
	}
	return out
}

func waitRoutes(t *testing.T, srv *xds.Server, what string, cond func([]string) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond(routeMatches(srv)) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: routes are\n%s", what, strings.Join(routeMatches(srv), "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The feed serves what the replicated state holds (without gossip, from the
// node states the leader recorded), drops workers whose lease ended, and
// serves the extra routes of the state: a leader loads a changed extra
// routes file into it live, and a refused file keeps the previous routes.
func TestRouteFeed(t *testing.T) {
	dir := t.TempDir()
	props := filepath.Join(dir, "iris-environment.prop")
	write := func(s string) {
		t.Helper()
		// A new inode each time, as editors and config managers write.
		tmp := props + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, props); err != nil {
			t.Fatal(err)
		}
	}
	write("envoy.xds.extra.routes.grafana.host=grafana.example.com\nenvoy.xds.extra.routes.grafana.prefix=/grafana\n")
	cfg := &config.Coordinator{}
	cfg.Envoy.ExtraRoutesFile = props

	state := fsm.New()
	apply(t, state, 1, &pb.Command{AtUnixMs: 1, Cmd: &pb.Command_NodeUpsert{NodeUpsert: &pb.Node{
		Name: "query-1", State: "alive", Host: "10.0.0.7",
		Services: []*pb.ServiceDef{{Name: "db_query_server", Envoy: &agentpb.EnvoyUpstream{PortName: "websocket", Port: 22052, Http2: true}}},
	}}})
	lease := time.Now().Add(time.Second).UnixMilli()
	apply(t, state, 2, &pb.Command{AtUnixMs: 2, Cmd: &pb.Command_WorkerSet{WorkerSet: &pb.WorkerSet{
		Node: "query-1", Dispatcher: "db_query_server", LeaseExpiresUnixMs: lease,
		Workers: []*agentpb.Worker{{Name: "w1", EnvoyPrefix: "/worker/w1", Port: 24001, Protocol: "http2"}},
	}}})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := xds.NewServer(ctx, slog.New(slog.DiscardHandler))
	file := testRoutesFile(t, cfg, state)
	feed := newRouteFeed(state, nil, srv, file, slog.New(slog.DiscardHandler))
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		feed.run(ctx, func(context.Context, time.Duration) bool { return true })
	}()
	go func() { defer wg.Done(); file.run(ctx) }()
	defer func() { cancel(); wg.Wait() }()

	has := func(want ...string) func([]string) bool {
		return func(rs []string) bool {
			for _, w := range want {
				if !slices.ContainsFunc(rs, func(r string) bool { return strings.Contains(r, w) }) {
					return false
				}
			}
			return true
		}
	}
	waitRoutes(t, srv, "initial", has("header envoy-prefix=/worker/w1 -> worker_w1", "/grafana -> extra_grafana"))
	for _, r := range srv.Routes() {
		if r.Cluster == "worker_w1" && (len(r.Endpoints) != 1 || r.Endpoints[0] != "10.0.0.7:24001") {
			t.Errorf("worker w1 endpoints %v, want the node's address", r.Endpoints)
		}
	}

	// The lease ends: the worker leaves at once, with no raft write.
	waitRoutes(t, srv, "lease ended", func(rs []string) bool { return !has("worker_w1")(rs) })

	// The file changes: the new routes are served without a restart.
	write("envoy.xds.extra.routes.docs.host=docs.internal\nenvoy.xds.extra.routes.docs.prefix=/docs\nenvoy.xds.extra.routes.docs.tls=false\n")
	waitRoutes(t, srv, "file changed", func(rs []string) bool { return has("/docs -> extra_docs")(rs) && !has("grafana")(rs) })

	// A bad file is refused with the key named; the running routes stay.
	write("envoy.xds.extra.routes.docs.host=docs.internal\nenvoy.xds.extra.routes.docs.prefix=/iris\n")
	deadline := time.Now().Add(10 * time.Second)
	for feed.table("").ExtraRoutesError == "" {
		if time.Now().After(deadline) {
			t.Fatal("the refused file is not reported")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if e := feed.table("").ExtraRoutesError; !strings.Contains(e, "envoy.xds.extra.routes.docs.prefix") {
		t.Errorf("error does not name the key: %s", e)
	}
	if !has("/docs -> extra_docs")(routeMatches(srv)) {
		t.Errorf("refused file took the routes away:\n%s", strings.Join(routeMatches(srv), "\n"))
	}
	if v := state.ExtraRoutes().Version; v != 2 {
		t.Errorf("extra routes version %d, want 2 (the file's two good versions)", v)
	}
}

// testRoutesFile is a leader's file loader that commits straight to state.
func testRoutesFile(t *testing.T, cfg *config.Coordinator, state *fsm.FSM) *routesFile {
	var index atomic.Uint64
	index.Store(100)
	return &routesFile{
		cfg: cfg, fsm: state, self: "c1", isLeader: func() bool { return true },
		hosts: func(context.Context) []string { return []string{"c1"} }, log: slog.New(slog.DiscardHandler),
		commit: func(_ context.Context, who string, doc *pb.ExtraRoutes) error {
			data, err := fsm.Encode(&pb.Command{Who: who, Cmd: &pb.Command_ExtraRoutesLoad{ExtraRoutesLoad: doc}})
			if err != nil {
				return err
			}
			if err, ok := state.Apply(&raft.Log{Index: index.Add(1), Type: raft.LogCommand, Data: data}).(error); ok {
				return err
			}
			return nil
		},
	}
}

// A new leader loads its coordinator.yaml's routes when none are loaded or
// the last came from a coordinator.yaml, but leaves an operator's load
// alone until its file changes.
func TestRoutesFileOnLeadership(t *testing.T) {
	dir := t.TempDir()
	props := filepath.Join(dir, "routes.prop")
	if err := os.WriteFile(props, []byte("envoy.xds.extra.routes.grafana.host=g\nenvoy.xds.extra.routes.grafana.prefix=/grafana\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Coordinator{}
	cfg.Envoy.ExtraRoutesFile = props
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		before   *pb.ExtraRoutes // loaded before this replica leads
		want     string          // the route served after it leads
		loadedBy string
	}{
		{"nothing loaded", nil, "grafana", "coordinator:c1"},
		{"another coordinator's file", &pb.ExtraRoutes{Source: "envoy.extra_routes_file of coordinator c2", ConfigOf: "c2"}, "grafana", "coordinator:c1"},
		{"an operator's load", &pb.ExtraRoutes{Source: "dhctl routes extra load x.prop"}, "", "operator:alice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := fsm.New()
			if tc.before != nil {
				tc.before.Sha256 = extraroutes.Sum(nil)
				apply(t, state, 1, &pb.Command{Who: "operator:alice", Cmd: &pb.Command_ExtraRoutesLoad{ExtraRoutesLoad: tc.before}})
			}
			testRoutesFile(t, cfg, state).poll(ctx, &pollState{})
			cur := state.ExtraRoutes()
			got := ""
			if cur != nil && len(cur.Routes) > 0 {
				got = cur.Routes[0].Name
			}
			if got != tc.want || cur.LoadedBy != tc.loadedBy {
				t.Errorf("served %q loaded by %s, want %q by %s", got, cur.LoadedBy, tc.want, tc.loadedBy)
			}
		})
	}
}

// A file the leader refuses (here a line of only a backslash) changes
// nothing and says why at its file:line; once fixed, it is loaded.
func TestRoutesFileRefused(t *testing.T) {
	props := filepath.Join(t.TempDir(), "routes.prop")
	if err := os.WriteFile(props, []byte("envoy.xds.extra.routes.grafana.host=g\n\\\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Coordinator{}
	cfg.Envoy.ExtraRoutesFile = props
	state := fsm.New()
	r := testRoutesFile(t, cfg, state)
	var st pollState
	r.poll(context.Background(), &st)
	if state.ExtraRoutes() != nil || !strings.Contains(r.Err(), props+":2:1: the line ends in a continuation") {
		t.Fatalf("loaded %v; error %q", state.ExtraRoutes(), r.Err())
	}
	if err := os.WriteFile(props, []byte("envoy.xds.extra.routes.grafana.host=g\nenvoy.xds.extra.routes.grafana.prefix=/grafana\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.poll(context.Background(), &st)
	if cur := state.ExtraRoutes(); cur == nil || len(cur.Routes) != 1 || cur.ConfigOf != "c1" || r.Err() != "" {
		t.Fatalf("fixed file: loaded %v; error %q", cur, r.Err())
	}
}
