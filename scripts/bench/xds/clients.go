package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	gproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
	"github.com/dhvisor/dhvisor/test/devcluster"
)

// seenLog keeps the route configurations a client received, raw, with
// when each arrived. Clients look for a worker's route in the bytes
// ("/worker/NAME:" occurs only in its path route) instead of decoding
// thousands of routes per change: the measuring clients share the
// coordinators' two cores, and real Envoys would not.
type seenLog struct {
	mu      sync.Mutex
	routes  []received
	bytes   int64
	changed chan struct{}
}

type received struct {
	at   time.Time
	data []byte
}

func newSeenLog() *seenLog { return &seenLog{changed: make(chan struct{})} }

func (l *seenLog) add(at time.Time, size int, routes []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bytes += int64(size)
	if routes != nil {
		l.routes = append(l.routes, received{at, routes})
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *seenLog) received() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bytes
}

// forget drops the route configurations received so far.
func (l *seenLog) forget() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.routes = nil
}

// wait returns when a route configuration with worker's route arrived.
func (l *seenLog) wait(ctx context.Context, worker string) (time.Time, error) {
	pattern := []byte("/worker/" + worker + ":")
	next := 0
	for {
		l.mu.Lock()
		ch := l.changed
		rs := l.routes
		l.mu.Unlock()
		for ; next < len(rs); next++ {
			if bytes.Contains(rs[next].data, pattern) {
				return rs[next].at, nil
			}
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("route of %s: %w", worker, ctx.Err())
		case <-ch:
		}
	}
}

// clusterName reads a Cluster's name (field 1) from its encoding without
// decoding the rest.
func clusterName(b []byte) (name string) {
	fields(b, 1, func(v []byte) { name = string(v) })
	return name
}

// dialXDS connects to a coordinator's xDS port with the operator's
// certificate, taking responses as big as 10,000 workers make them, and
// leaving state-of-the-world responses undecoded (rawResponses).
func dialXDS(cl *devcluster.Cluster, addr string) (*grpc.ClientConn, error) {
	tc, err := tlsutil.ClientConfig(tlsutil.Files{CA: filepath.Join(cl.TLS, "ca.pem"), Cert: filepath.Join(cl.TLS, "operator-tester.pem"), Key: filepath.Join(cl.TLS, "operator-tester-key.pem")}, tlsutil.RoleCoordinator)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20), grpc.ForceCodecV2(rawResponses{encoding.GetCodecV2(gproto.Name)})))
}

// rawResponses is gRPC's proto codec, but a state-of-the-world response is
// decoded only as far as its version, type and nonce: the rest stays bytes,
// in which a subscriber finds the routes and cluster names it needs.
// Decoding a thousand clusters per client per change took the measuring
// clients' share of the two cores the coordinators are measured on;
// Envoy decodes on its own host.
type rawResponses struct{ encoding.CodecV2 }

func (c rawResponses) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*discovery.DiscoveryResponse)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	b := data.Materialize()
	for rest := b; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 {
			return protowire.ParseError(n)
		}
		rest = rest[n:]
		var s []byte
		if typ == protowire.BytesType {
			s, _ = protowire.ConsumeBytes(rest)
		}
		switch num {
		case 1:
			r.VersionInfo = string(s)
		case 4:
			r.TypeUrl = string(s)
		case 5:
			r.Nonce = string(s)
		}
		if n = protowire.ConsumeFieldValue(num, typ, rest); n < 0 {
			return protowire.ParseError(n)
		}
		rest = rest[n:]
	}
	r.ProtoReflect().SetUnknown(b)
	return nil
}

// eachResource calls f with the bytes of each resource of a response
// rawResponses read (the value of each Any in field 2).
func eachResource(r *discovery.DiscoveryResponse, f func(value []byte)) {
	fields(r.ProtoReflect().GetUnknown(), 2, func(anyMsg []byte) {
		fields(anyMsg, 2, f)
	})
}

// fields calls f with the bytes of each length-delimited field num of a
// message.
func fields(b []byte, num protowire.Number, f func([]byte)) {
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return
		}
		b = b[l:]
		if n == num && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b)
			f(v)
		}
		if l = protowire.ConsumeFieldValue(n, typ, b); l < 0 {
			return
		}
		b = b[l:]
	}
}

func benchNode(id string) *core.Node {
	meta, _ := structpb.NewStruct(map[string]any{"dhvisor_xds_flavour": "ads"})
	return &core.Node{Id: id, Metadata: meta}
}

// subscriber is an Envoy-like state-of-the-world ADS client: every cluster,
// their endpoints, and rds_config, each response acknowledged.
type subscriber struct {
	*seenLog
	coord  int // the coordinator it subscribes at
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{}
}

func newSubscriber(ctx context.Context, cl *devcluster.Cluster, coord, i int) (*subscriber, error) {
	conn, err := dialXDS(cl, cl.XDSAddrs[coord])
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		cancel()
		conn.Close()
		return nil, err
	}
	node := benchNode(fmt.Sprintf("bench-sotw-%d", i))
	s := &subscriber{seenLog: newSeenLog(), coord: coord, conn: conn, cancel: cancel, done: make(chan struct{})}
	for _, req := range []*discovery.DiscoveryRequest{
		{Node: node, TypeUrl: resource.ClusterType},
		{Node: node, TypeUrl: resource.RouteType, ResourceNames: []string{"rds_config"}},
	} {
		if err := stream.Send(req); err != nil {
			cancel()
			conn.Close()
			return nil, err
		}
	}
	go func() {
		defer close(s.done)
		var edsNames []string
		// A request must carry the type's last nonce, as Envoy's do, or
		// go-control-plane ignores it as stale.
		nonces := map[string]string{}
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			at := time.Now()
			var routes []byte
			switch resp.TypeUrl {
			case resource.RouteType:
				eachResource(resp, func(v []byte) { routes = append(routes, v...) })
			case resource.ClusterType:
				// Envoy asks for the endpoints of every EDS cluster it got
				// (here: every cluster but the extra routes' DNS ones).
				edsNames = edsNames[:0]
				eachResource(resp, func(v []byte) {
					if name := clusterName(v); name != "" && !strings.HasPrefix(name, "extra_") {
						edsNames = append(edsNames, name)
					}
				})
				if stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: edsNames, ResponseNonce: nonces[resource.EndpointType]}) != nil {
					return
				}
			}
			s.add(at, len(resp.ProtoReflect().GetUnknown()), routes)
			nonces[resp.TypeUrl] = resp.Nonce
			ack := &discovery.DiscoveryRequest{TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}
			switch resp.TypeUrl {
			case resource.RouteType:
				ack.ResourceNames = []string{"rds_config"}
			case resource.EndpointType:
				ack.ResourceNames = edsNames
			}
			if stream.Send(ack) != nil {
				return
			}
		}
	}()
	return s, nil
}

func (s *subscriber) close() {
	s.cancel()
	<-s.done
	s.conn.Close()
}

// deltaSubscriber is an incremental-xDS client of every cluster and
// rds_config: what it is sent per change shows what delta saves.
type deltaSubscriber struct {
	*seenLog
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{}
}

func newDeltaSubscriber(ctx context.Context, cl *devcluster.Cluster, addr string) (*deltaSubscriber, error) {
	conn, err := dialXDS(cl, addr)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(sctx)
	if err != nil {
		cancel()
		conn.Close()
		return nil, err
	}
	node := benchNode("bench-delta")
	for _, req := range []*discovery.DeltaDiscoveryRequest{
		{Node: node, TypeUrl: resource.ClusterType},
		{Node: node, TypeUrl: resource.RouteType, ResourceNamesSubscribe: []string{"rds_config"}},
	} {
		if err := stream.Send(req); err != nil {
			cancel()
			conn.Close()
			return nil, err
		}
	}
	d := &deltaSubscriber{seenLog: newSeenLog(), conn: conn, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			at := time.Now()
			var routes []byte
			if resp.TypeUrl == resource.RouteType {
				for _, r := range resp.Resources {
					routes = append(routes, r.GetResource().GetValue()...)
				}
			}
			d.add(at, proto.Size(resp), routes)
			if stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce}) != nil {
				return
			}
		}
	}()
	return d, nil
}

func (d *deltaSubscriber) close() {
	d.cancel()
	<-d.done
	d.conn.Close()
}

// grpcClient is grpc-go's own xDS client routing RPCs by the envoy-prefix
// header, as a Core+ client does.
type grpcClient struct{ conn *grpc.ClientConn }

func newGRPCClient(cl *devcluster.Cluster, addr string) (*grpcClient, error) {
	conn, err := cl.GRPCXDSClient(addr)
	if err != nil {
		return nil, err
	}
	return &grpcClient{conn: conn}, nil
}

func (g *grpcClient) close() { g.conn.Close() }

// routed polls until an RPC with worker's envoy prefix reaches the bench's
// stand-in worker, and returns when it first did.
func (g *grpcClient) routed(ctx context.Context, worker string) (time.Time, error) {
	for {
		cctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "envoy-prefix", "/worker/"+worker), time.Second)
		var h metadata.MD
		err := g.conn.Invoke(cctx, "/io.deephaven.proto.backplane.grpc.TableService/ExportedTableUpdates", &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&h))
		cancel()
		if err == nil && len(h.Get("x-standin-worker")) > 0 {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("grpc-go routing %s: %w (last: %v)", worker, ctx.Err(), err)
		case <-time.After(time.Millisecond):
		}
	}
}

// startWorker runs the stand-in worker every registered worker points at.
func (b *bench) startWorker() (int, error) {
	ports, err := devcluster.FreePorts(1)
	if err != nil {
		return 0, err
	}
	port := ports[0]
	cmd := exec.Command(filepath.Join(b.root, "bin", "dh-standin"), "--worker", "bench", "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	b.worker = cmd
	return port, nil
}
