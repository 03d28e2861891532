package coordinator

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/xds"
	"github.com/dhvisor/dhvisor/internal/config"
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
// applies a changed extra routes file live, keeping the previous routes
// when the file is refused.
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
	// Another dispatcher names a worker w1 too and claims w1's prefix: each
	// w1 keeps its own cluster and path, the shared header routes neither.
	apply(t, state, 3, &pb.Command{AtUnixMs: 3, Cmd: &pb.Command_WorkerSet{WorkerSet: &pb.WorkerSet{
		Node: "query-1", Dispatcher: "db_merge_server", LeaseExpiresUnixMs: lease,
		Workers: []*agentpb.Worker{{Name: "w1", EnvoyPrefix: "/worker/w1", Port: 25001, Protocol: "http2"}, {Name: "w9", EnvoyPrefix: "/worker/w9", Port: 25009, Protocol: "http2"}},
	}}})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := xds.NewServer(ctx, slog.New(slog.DiscardHandler))
	feed, err := newRouteFeed(ctx, cfg, state, nil, srv, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		feed.run(ctx, func(context.Context, time.Duration) bool { return true })
	}()
	defer func() { cancel(); <-done }()

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
	const w1 = "worker_w1:db_query_server:query-1"
	waitRoutes(t, srv, "initial", has("/worker/w1:db_query_server:query-1/ -> "+w1, "/worker/w1:db_merge_server:query-1/ -> worker_w1:db_merge_server:query-1",
		"header envoy-prefix=/worker/w9 -> worker_w9:db_merge_server:query-1", "/grafana -> extra_grafana"))
	for _, r := range srv.Routes() {
		if r.Cluster == w1 && (len(r.Endpoints) != 1 || r.Endpoints[0] != "10.0.0.7:24001") {
			t.Errorf("worker w1 endpoints %v, want the node's address", r.Endpoints)
		}
		if strings.Contains(r.Match(), "envoy-prefix=/worker/w1") {
			t.Errorf("a prefix two dispatchers claim is routed: %s -> %s", r.Match(), r.Cluster)
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
}
