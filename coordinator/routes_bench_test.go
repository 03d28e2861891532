package coordinator

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	sotwclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/xds"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// BenchmarkRouteFeedChange is a replica's work for one worker replaced in a
// dispatcher's set of 1,000: read the state into a model, build and serve it
// to one Envoy.
func BenchmarkRouteFeedChange(b *testing.B) {
	state := fsm.New()
	apply(b, state, 1, &pb.Command{AtUnixMs: 1, Cmd: &pb.Command_NodeUpsert{NodeUpsert: &pb.Node{Name: "q", State: "alive", Host: "10.0.0.7"}}})
	set := func(index uint64, extra string) {
		ws := &pb.WorkerSet{Node: "q", Dispatcher: "db_query_server", LeaseExpiresUnixMs: time.Now().Add(time.Hour).UnixMilli()}
		for i := range 999 {
			ws.Workers = append(ws.Workers, &agentpb.Worker{Name: fmt.Sprintf("w%d", i), EnvoyPrefix: fmt.Sprintf("/worker/w%d", i), Port: 24000, Protocol: "http2"})
		}
		ws.Workers = append(ws.Workers, &agentpb.Worker{Name: extra, EnvoyPrefix: "/worker/" + extra, Port: 24000, Protocol: "http2"})
		apply(b, state, index, &pb.Command{AtUnixMs: 2, Cmd: &pb.Command_WorkerSet{WorkerSet: ws}})
	}
	set(2, "x")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := xds.NewServer(ctx, slog.New(slog.DiscardHandler))
	f := newRouteFeed(state, nil, srv, nil, slog.New(slog.DiscardHandler))
	m, _ := f.build(time.Now())
	if err := srv.Update(m); err != nil {
		b.Fatal(err)
	}
	envoyAsks(b, ctx, srv)
	var model, update time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		set(uint64(3+i), fmt.Sprintf("t%d", i))
		b.StartTimer()
		start := time.Now()
		m, _ := f.build(time.Now())
		mid := time.Now()
		if err := srv.Update(m); err != nil {
			b.Fatal(err)
		}
		model += mid.Sub(start)
		update += time.Since(mid)
	}
	b.ReportMetric(float64(model.Microseconds())/float64(b.N), "model-us/op")
	b.ReportMetric(float64(update.Microseconds())/float64(b.N), "update-us/op")
}

// envoyAsks has an Envoy (the classic flavour) fetch srv's clusters once, so
// that srv builds them on every change from then on, as a coordinator with
// an Envoy connected does.
func envoyAsks(b *testing.B, ctx context.Context, srv *xds.Server) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	b.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	c := sotwclient.NewADSClient(ctx, &core.Node{Id: "envoy", UserAgentName: "envoy"}, resource.ClusterType)
	if err := c.InitConnect(conn); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Fetch(); err != nil {
		b.Fatal(err)
	}
}
