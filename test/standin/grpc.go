package main

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Response headers of every gRPC call, so a test can tell which process,
// port and method a call routed through Envoy reached.
const (
	headerName   = "x-standin"        // the stand-in's --name
	headerWorker = "x-standin-worker" // the worker's name, with --worker
	headerPort   = "x-standin-port"   // the local port that answered
	headerMethod = "x-standin-method" // the full method, as the process received it
)

// grpcIdentity answers gRPC on the stand-in's ports: any method of any
// service with an empty message, except the standard health service, which
// tells the stand-in's health (NOT_SERVING while unhealthy or stopping).
// It plays no real Deephaven API: it only proves where a call arrived.
type grpcIdentity struct {
	name, worker string
	srv          *grpc.Server
	health       *health.Server
}

func newGRPCIdentity(name, worker string) *grpcIdentity {
	g := &grpcIdentity{name: name, worker: worker, health: health.NewServer()}
	g.srv = grpc.NewServer(
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			return stream.SendMsg(&emptypb.Empty{})
		}),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := grpc.SetHeader(ctx, g.headers(ctx, info.FullMethod)); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := ss.SetHeader(g.headers(ss.Context(), info.FullMethod)); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	)
	healthpb.RegisterHealthServer(g.srv, g.health)
	return g
}

func (g *grpcIdentity) headers(ctx context.Context, method string) metadata.MD {
	md := metadata.Pairs(headerName, g.name, headerMethod, method)
	if p, ok := peer.FromContext(ctx); ok {
		if a, ok := p.LocalAddr.(*net.TCPAddr); ok {
			md.Set(headerPort, strconv.Itoa(a.Port))
		}
	}
	if g.worker != "" {
		md.Set(headerWorker, g.worker)
	}
	return md
}

// setHealth is a no-op without --grpc.
func (g *grpcIdentity) setHealth(ok bool) {
	if g == nil {
		return
	}
	st := healthpb.HealthCheckResponse_SERVING
	if !ok {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	g.health.SetServingStatus("", st)
}

// isGRPC tells a gRPC request from the stand-in's plain HTTP ones.
func isGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}
