package xds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/dhvisor/dhvisor/internal/config"
)

// standIn is a gRPC server that answers any method with a header naming it.
type standIn struct {
	name string
	port uint32
}

func startStandIn(t *testing.T, name string) standIn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
			return err
		}
		if err := stream.SendHeader(metadata.Pairs("served-by", name)); err != nil {
			return err
		}
		return stream.SendMsg(&emptypb.Empty{})
	}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(lis)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-done
	})
	return standIn{name: name, port: uint32(lis.Addr().(*net.TCPAddr).Port)}
}

// grpcXDSClient is a grpc-go channel to xds:///deephaven, with its own xDS
// client of addr.
func grpcXDSClient(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "grpc-test-client"}
	}`, addr)
	resolver, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///"+ListenerName, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(resolver))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// call makes an RPC and says who served it.
func call(ctx context.Context, conn *grpc.ClientConn, method, prefix string) (string, error) {
	if prefix != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, PrefixHeader, prefix)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var header metadata.MD
	if err := conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&header)); err != nil {
		return "", err
	}
	return strings.Join(header.Get("served-by"), ","), nil
}

// eventually calls until the RPC is served by want: grpc-go applies what it
// is sent a few milliseconds after it is sent.
func eventually(t *testing.T, conn *grpc.ClientConn, method, prefix, want string) {
	t.Helper()
	ctx := testCtx(t)
	var got string
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got, err = call(ctx, conn, method, prefix); err == nil && got == want {
			return
		}
	}
	t.Fatalf("%s with %s=%q: served by %q (%v), want %q", method, PrefixHeader, prefix, got, err, want)
}

const tableMethod = "/io.deephaven.proto.backplane.grpc.TableService/ExportedTableUpdates"

func TestGRPCGoRoutes(t *testing.T) {
	s, addr := startServer(t)
	web, authSI, w1, w2, w1b, extra, imported := startStandIn(t, "web"), startStandIn(t, "auth"), startStandIn(t, "w1"),
		startStandIn(t, "w2"), startStandIn(t, "w1b"), startStandIn(t, "extra"), startStandIn(t, "imported")
	// A worker imported from Deephaven's configuration server, its prefix
	// as Deephaven made it.
	const importedPrefix = "/worker/Core+ q1:24011 a3f9"
	worker := func(name string, si standIn) Worker {
		return Worker{Name: name, Prefix: "/worker/" + name, Host: "127.0.0.1", Port: si.port, Node: "query1", Dispatcher: "db_query_server", HTTP2: true}
	}
	m := Model{
		Services: []Service{
			{Name: webAPI, Default: true, Endpoints: []Endpoint{{Node: "infra", Host: "127.0.0.1", Port: web.port}}},
			{Name: auth, HTTP2: true, Routes: []string{"/io.deephaven.proto.auth.grpc.AuthApi/"}, Endpoints: []Endpoint{{Node: "infra", Host: "127.0.0.1", Port: authSI.port}}},
		},
		Workers: []Worker{worker("w1", w1), worker("w2", w2),
			{Name: "x-a3f9", Prefix: importedPrefix, Host: "127.0.0.1", Port: imported.port, Node: "10.0.0.5:8124", Dispatcher: "configuration_server", HTTP2: true}},
		ExtraRoutes: []config.ExtraRoute{
			// LOGICAL_DNS, which grpc-go resolves itself.
			{Name: "plain", Host: "localhost", Port: int(extra.port), Prefix: "/plain", PrefixRewrite: "/"},
			// A cluster with an UpstreamTlsContext and no certificate
			// provider: grpc-go rejects it.
			{Name: "secure", Host: "127.0.0.1", Port: int(extra.port), Prefix: "/secure", PrefixRewrite: "/", TLS: true},
		},
	}
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	conn := grpcXDSClient(t, addr)

	eventually(t, conn, tableMethod, "/worker/w1", "w1")
	eventually(t, conn, tableMethod, "/worker/w2", "w2")
	eventually(t, conn, tableMethod, importedPrefix, "imported")
	eventually(t, conn, "/io.deephaven.proto.auth.grpc.AuthApi/AuthenticateByPassword", "", "auth")
	eventually(t, conn, tableMethod, "", "web")
	eventually(t, conn, "/plain/Call", "", "extra")

	// grpc-go rejected the TLS cluster and kept everything else: the RPCs
	// above work, and the one routed to it fails.
	st := s.Status()
	if st.Rejected == 0 || !strings.Contains(st.LastRejection, ExtraCluster("secure")) {
		t.Errorf("grpc-go's rejections: %d, last %q; want one naming %s", st.Rejected, st.LastRejection, ExtraCluster("secure"))
	}
	t.Logf("grpc-go rejects the TLS cluster: %s", st.LastRejection)
	_, err := call(testCtx(t), conn, "/secure/Call", "")
	if status.Code(err) != codes.Unavailable {
		t.Errorf("RPC to the rejected TLS cluster: %v, want Unavailable", err)
	}
	t.Logf("an RPC routed to it: %v", err)
	// The rejection is not answered with the same response in a loop.
	time.Sleep(200 * time.Millisecond)
	if n := s.Status().Rejected; n != st.Rejected {
		t.Errorf("rejections went on without a change: %d, then %d", st.Rejected, n)
	}

	// w1 re-registered on another port.
	m.Workers[0] = worker("w1", w1b)
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	eventually(t, conn, tableMethod, "/worker/w1", "w1b")
	eventually(t, conn, tableMethod, "/worker/w2", "w2")

	// w1 gone: its header matches no route left, so its calls fall through
	// to the catch-all, web_api_service, as they would in Envoy.
	m.Workers = m.Workers[1:]
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	eventually(t, conn, tableMethod, "/worker/w1", "web")
	eventually(t, conn, tableMethod, importedPrefix, "imported")

	// With no web_api_service instance either, they fail.
	m.Services = m.Services[1:]
	if err := s.Update(m); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, err = call(ctx, conn, tableMethod, "/worker/w1")
		if status.Code(err) == codes.Unavailable || time.Now().After(deadline) {
			break
		}
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("RPC for a gone worker with no web_api_service: %v, want Unavailable", err)
	}
	t.Logf("an RPC for a gone worker with no web_api_service: %v", err)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Error("the RPC waited for its deadline instead of failing")
	}
}
