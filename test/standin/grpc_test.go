//go:build linux

package main

import (
	"context"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
)

// call invokes method on addr over plaintext HTTP/2 and returns the
// response headers.
func call(ctx context.Context, t *testing.T, addr, method string) (metadata.MD, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var md metadata.MD
	err = conn.Invoke(cctx, method, &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&md))
	return md, err
}

func expectIdentity(t *testing.T, md metadata.MD, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got := md.Get(k); len(got) != 1 || got[0] != v {
			t.Errorf("header %s = %q, want %q (all: %v)", k, got, v, md)
		}
	}
}

func healthStatus(ctx context.Context, t *testing.T, addr string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("health check: %v", err)
	}
	return resp.Status
}

func TestGRPCIdentity(t *testing.T) {
	// Parallel subtests run after this function returns: each has its own context.
	deadline := func(t *testing.T) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	t.Run("any method on every port, beside HTTP", func(t *testing.T) {
		t.Parallel()
		ctx := deadline(t)
		p := start(t, nil, "--name", "n1/authentication_server", "--port", "0", "--port", "0", "--grpc")
		for _, a := range p.listening(ctx) {
			const method = "/io.deephaven.proto.auth.grpc.AuthApi/authenticateByPassword"
			md, err := call(ctx, t, a, method)
			if err != nil {
				t.Fatalf("%s: %v", a, err)
			}
			expectIdentity(t, md, map[string]string{headerName: "n1/authentication_server", headerMethod: method, headerPort: strconv.Itoa(portOf(t, a))})
			if w := md.Get(headerWorker); len(w) != 0 {
				t.Errorf("worker header %q on a service", w)
			}
			// The same port still serves the plain HTTP of every stand-in.
			expect(ctx, t, "GET", a, "/health", "", 200, "ok n1/authentication_server")
			if in := identity(ctx, t, a); in.Name != "n1/authentication_server" || in.Worker != "" {
				t.Errorf("GET /: %+v", in)
			}
		}
	})

	t.Run("health follows the faults", func(t *testing.T) {
		t.Parallel()
		ctx := deadline(t)
		p := start(t, nil, "--name", "h", "--port", "0", "--grpc", "--unhealthy")
		a := p.listening(ctx)[0]
		if st := healthStatus(ctx, t, a); st != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("health %v with --unhealthy", st)
		}
		expect(ctx, t, "POST", a, "/fault/healthy", "", 200, "")
		if st := healthStatus(ctx, t, a); st != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health %v after fault healthy", st)
		}
	})

	t.Run("a dispatcher's worker", func(t *testing.T) {
		t.Parallel()
		ctx := deadline(t)
		p := start(t, nil, "--worker", "Query_1-abc", "--listen", "127.0.0.1:0")
		a := p.listening(ctx)[0]
		md, err := call(ctx, t, a, "/io.deephaven.proto.backplane.grpc.TableService/GetExportedTableCreationResponse")
		if err != nil {
			t.Fatal(err)
		}
		expectIdentity(t, md, map[string]string{headerName: "Query_1-abc", headerWorker: "Query_1-abc"})
		if in := identity(ctx, t, a); in.Name != "Query_1-abc" || in.Worker != "Query_1-abc" {
			t.Errorf("GET /: %+v", in)
		}

		q := start(t, nil, "--worker", "w2", "--name", "n2/db_query_server/w2", "--listen", "127.0.0.1:0")
		md, err = call(ctx, t, q.listening(ctx)[0], "/x.Y/Z")
		if err != nil {
			t.Fatal(err)
		}
		expectIdentity(t, md, map[string]string{headerName: "n2/db_query_server/w2", headerWorker: "w2"})
	})

	t.Run("no gRPC without the flag", func(t *testing.T) {
		t.Parallel()
		ctx := deadline(t)
		p := start(t, nil, "--name", "plain", "--port", "0")
		if md, err := call(ctx, t, p.listening(ctx)[0], "/x.Y/Z"); err == nil {
			t.Fatalf("gRPC answered without --grpc: %v", md)
		}
	})
}
