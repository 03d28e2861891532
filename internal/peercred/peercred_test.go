package peercred

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/dhvisor/dhvisor/test/need"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOfUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan Cred, 1)
	var groups []uint32
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(done)
			return
		}
		defer c.Close()
		cred, err := Of(c)
		if err != nil {
			t.Error(err)
		}
		if groups, err = GroupsOf(c); err != nil {
			t.Error(err)
		}
		done <- cred
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := <-done
	want := Cred{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	if got != want {
		t.Fatalf("Of = %v, want %v", got, want)
	}
	mine, err := syscall.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(groups) != fmt.Sprint(mine) {
		t.Fatalf("GroupsOf = %v, want %v", groups, mine)
	}
}

func TestOfRefusesTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			defer c.Close()
			if _, err := Of(c); err != ErrNoCred {
				t.Errorf("Of(tcp) = %v, want ErrNoCred", err)
			}
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// The handler of a gRPC call sees the caller's credentials.
func TestFromContextInGRPC(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan Cred, 1)
	srv := grpc.NewServer(grpc.Creds(TransportCredentials()), grpc.UnaryInterceptor(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			c, err := FromContext(ctx)
			if err != nil {
				t.Error(err)
			}
			seen <- c
			return h(ctx, req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(l)
	defer srv.Stop()
	cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := <-seen; got.UID != uint32(os.Getuid()) || got.PID != int32(os.Getpid()) {
		t.Fatalf("FromContext = %v", got)
	}
	if _, err := FromContext(peer.NewContext(context.Background(), &peer.Peer{})); err != ErrNoCred {
		t.Fatalf("FromContext without AuthInfo = %v", err)
	}
}

// The kernel reports the peer's supplementary groups, all of them however
// many (the buffer grows past its first size).
func TestPeerGroupsGrowsItsBuffer(t *testing.T) {
	need.Root(t, "to take 100 groups")
	// A socketpair's peer credentials are its creator's at creation:
	// create one holding more groups than the first buffer has room for.
	orig, err := syscall.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	many := make([]int, 100)
	for i := range many {
		many[i] = 1000 + i
	}
	if err := syscall.Setgroups(many); err != nil {
		t.Fatal(err)
	}
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if rerr := syscall.Setgroups(orig); rerr != nil {
		t.Fatal(rerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(pair[0])
	defer syscall.Close(pair[1])
	gs, err := peerGroups(pair[0])
	if err != nil || len(gs) != 100 || gs[0] != 1000 || gs[99] != 1099 {
		t.Fatalf("peerGroups = %v, %v; want 1000..1099", gs, err)
	}
}
