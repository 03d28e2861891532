package tlsutil

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func TestGRPCPeerIdentity(t *testing.T) {
	a := newPKI(t, "A")
	coord := a.issue(t, RoleCoordinator, "c1")
	agent := a.issue(t, RoleAgent, "n1")
	alice := a.issue(t, RoleOperator, "alice")

	scfg, err := ServerConfig(coord, RoleAgent, RoleCoordinator)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(scfg)),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			id, ok := PeerIdentity(ctx)
			if !ok {
				return nil, status.Error(codes.Unauthenticated, "no identity")
			}
			mu.Lock()
			seen = append(seen, id.String())
			mu.Unlock()
			return h(ctx, req)
		}),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	defer func() { srv.Stop(); <-done }()

	call := func(f Files) error {
		ccfg, err := ClientConfig(f, RoleCoordinator)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(ccfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %v", resp.Status)
		}
		return err
	}
	if err := call(agent); err != nil {
		t.Fatalf("agent call: %v", err)
	}
	if err := call(alice); status.Code(err) != codes.Unavailable {
		t.Errorf("operator call to a server allowing agents and coordinators: %v, want Unavailable", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0] != "agent:n1" {
		t.Errorf("server saw %q, want [agent:n1]", seen)
	}

	if _, ok := PeerIdentity(context.Background()); ok {
		t.Error("PeerIdentity without a peer succeeded")
	}
}
