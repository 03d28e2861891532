package envoy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/conncache"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// coordinator answers Peers with whatever peers holds.
type coordinator struct {
	pb.UnimplementedCoordinatorServer
	mu    sync.Mutex
	peers []*pb.Peer
}

func (c *coordinator) Peers(context.Context, *pb.PeersRequest) (*pb.PeersResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := &pb.PeersResponse{}
	for _, p := range c.peers {
		out.Peers = append(out.Peers, &pb.PeerStatus{Peer: p, Voter: true})
	}
	return out, nil
}

func (c *coordinator) set(peers ...*pb.Peer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peers = peers
}

func serve(t *testing.T, c *coordinator) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterCoordinatorServer(s, c)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return l.Addr().String()
}

func TestBootstrapperUpdate(t *testing.T) {
	c := &coordinator{}
	addr := serve(t, c)
	down := "127.0.0.1:1" // nothing listens: tried first (sorted ids), then the next
	coords := map[string]string{"a-down": down, "c1": addr}
	conns := conncache.New(insecure.NewCredentials())
	defer conns.Close()
	file := filepath.Join(t.TempDir(), "envoy", "envoy.yaml")
	opts := Options(config.EnvoyContainer{ListenPort: 8000, AdminPort: 8001, Render: config.EnvoyRender{NodeID: "edge1", Cluster: "deephaven", XDSPlaintext: true, ListenerPlaintext: true}})
	b := NewBootstrapper(file, opts, func() map[string]string { return coords }, nil, conns, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()

	if err := b.Update(ctx); err == nil {
		t.Fatal("rendered with no peers")
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("a file without coordinators: %v", err)
	}

	c.set(&pb.Peer{Id: "c2", XdsAddr: "10.0.0.7:8127"}, &pb.Peer{Id: "c1", XdsAddr: "10.0.0.6:8127"})
	if err := b.Update(ctx); err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	out := string(first)
	i6, i7 := strings.Index(out, "10.0.0.6"), strings.Index(out, "10.0.0.7")
	if i6 < 0 || i7 < 0 || i6 > i7 || !strings.Contains(out, "initial_fetch_timeout: 0s") || !strings.Contains(out, "id: edge1") {
		t.Fatalf("bootstrap:\n%s", out)
	}
	st, _ := os.Stat(file)

	// The same peers in another order: the same file, not rewritten.
	c.set(&pb.Peer{Id: "c1", XdsAddr: "10.0.0.6:8127"}, &pb.Peer{Id: "c2", XdsAddr: "10.0.0.7:8127"})
	if err := b.Update(ctx); err != nil {
		t.Fatal(err)
	}
	if st2, _ := os.Stat(file); !os.SameFile(st, st2) {
		t.Fatal("an unchanged bootstrap was written again (the container would be recreated)")
	}

	// A peer that does not say its xDS address: the file stays.
	c.set(&pb.Peer{Id: "c1", XdsAddr: "10.0.0.6:8127"}, &pb.Peer{Id: "c3"})
	if err := b.Update(ctx); err == nil || !strings.Contains(err.Error(), "c3 has not published its xDS address") {
		t.Fatalf("err %v", err)
	}
	// No coordinator answering: the file stays.
	coords = map[string]string{"a-down": down}
	if err := b.Update(ctx); err == nil {
		t.Fatal("no error with every coordinator down")
	}
	if got, _ := os.ReadFile(file); string(got) != string(first) {
		t.Fatal("the bootstrap changed without an answer")
	}
	// A coordinator added: rendered again with it.
	coords = map[string]string{"c1": addr}
	c.set(&pb.Peer{Id: "c1", XdsAddr: "10.0.0.6:8127"}, &pb.Peer{Id: "c2", XdsAddr: "10.0.0.7:8127"}, &pb.Peer{Id: "c3", XdsAddr: "10.0.0.8:8127"})
	if err := b.Update(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(file); !strings.Contains(string(got), "10.0.0.8") {
		t.Fatalf("new coordinator missing:\n%s", got)
	}
}
