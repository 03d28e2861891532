package api

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/dhvisor/dhvisor/internal/peercred"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
	"github.com/dhvisor/dhvisor/test/asuser"
	"github.com/dhvisor/dhvisor/test/need"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Every method of the Agent service has a level: a new RPC cannot be
// served to the socket group by forgetting it (it would be root's), and
// the table names no method that does not exist.
func TestEveryMethodHasALevel(t *testing.T) {
	seen := map[string]bool{}
	for _, name := range agentMethods() {
		seen[name] = true
		if _, ok := methodLevels[name]; !ok {
			t.Errorf("%s is not in methodLevels: say who may call it on the local socket", name)
		}
	}
	for name := range methodLevels {
		if !seen[name] {
			t.Errorf("methodLevels names %s, which the Agent service does not have", name)
		}
	}
}

func agentMethods() []string {
	var out []string
	for _, m := range pb.Agent_ServiceDesc.Methods {
		out = append(out, "/"+pb.Agent_ServiceDesc.ServiceName+"/"+m.MethodName)
	}
	for _, s := range pb.Agent_ServiceDesc.Streams {
		out = append(out, "/"+pb.Agent_ServiceDesc.ServiceName+"/"+s.StreamName)
	}
	return out
}

// groupMay is what the socket group may do, said here apart from the
// table: read and control services. Everything else is root's.
var groupMay = map[string]bool{
	pb.Agent_Status_FullMethodName:  true,
	pb.Agent_Cluster_FullMethodName: true,
	pb.Agent_Logs_FullMethodName:    true,
	pb.Agent_Control_FullMethodName: true,
	pb.Agent_Up_FullMethodName:      true,
	pb.Agent_Down_FullMethodName:    true,
}

// handlerOnly answers every call Unimplemented: a call that gets that far
// was let through.
type handlerOnly struct{ pb.UnimplementedAgentServer }

// The users the tests call as: nobody, in the socket group (nogroup) by
// its primary gid; by a supplementary group; and in neither.
const (
	nobody   = 65534
	nogroup  = 65534
	daemonGr = 1
)

type caller struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32
}

var (
	member       = caller{"member by primary gid", nobody, nogroup, nil}
	supplemental = caller{"member by supplementary group", nobody, daemonGr, []uint32{nogroup}}
	outsider     = caller{"outsider", nobody, daemonGr, nil}
)

// TestSocketAccess calls every method on a socket made by ListenUnix, as
// root, as members of its group and as an outsider: the group gets
// status, logs and service control, and every other method is refused
// with what it needs and who asked.
func TestSocketAccess(t *testing.T) {
	need.Root(t, "to call as other users")
	dir := t.TempDir()
	// Other users must reach the socket through the test's directories.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "agent.sock")
	l, access, note, err := ListenUnix(path, "nogroup")
	if err != nil || note != "" {
		t.Fatalf("ListenUnix: %v %s", err, note)
	}
	srv := grpc.NewServer(grpc.Creds(peercred.TransportCredentials()),
		grpc.ChainUnaryInterceptor(access.Unary), grpc.ChainStreamInterceptor(access.Stream))
	pb.RegisterAgentServer(srv, handlerOnly{})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	defer func() { srv.Stop(); <-served }()

	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != nogroup {
		t.Fatalf("socket %v %v, want mode 0660 group nogroup", fi.Mode(), err)
	}
	// The socket file keeps outsiders away; the calls are refused too
	// should its mode ever be wider.
	if _, err := dialAs(path, outsider); err == nil {
		t.Fatal("an outsider connected to a 0660 socket of another group")
	}

	for _, c := range []caller{member, supplemental} {
		for _, m := range agentMethods() {
			err := invoke(t, dialOrFail(t, path, c), m)
			short := m[strings.LastIndex(m, "/")+1:]
			if groupMay[m] {
				if status.Code(err) != codes.Unimplemented {
					t.Errorf("%s: %s = %v, want it let through", c.name, short, err)
				}
				continue
			}
			want := short + " needs root (caller uid 65534 nobody, groups "
			if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.HasPrefix(st.Message(), want) {
				t.Errorf("%s: %s = %v, want PermissionDenied %q...", c.name, short, err, want)
			}
		}
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	for _, m := range agentMethods() {
		err := invoke(t, dialOrFail(t, path, outsider), m)
		short := m[strings.LastIndex(m, "/")+1:]
		want := short + " needs root (caller uid 65534 nobody, groups daemon)"
		if groupMay[m] {
			want = short + " needs root or group nogroup (caller uid 65534 nobody, groups daemon)"
		}
		if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != want {
			t.Errorf("outsider: %s = %v, want PermissionDenied %q", short, err, want)
		}
	}
	root := caller{"root", 0, 0, nil}
	for _, m := range agentMethods() {
		if err := invoke(t, dialOrFail(t, path, root), m); status.Code(err) != codes.Unimplemented {
			t.Errorf("root: %s = %v, want it let through", m, err)
		}
	}
}

// A group that does not exist leaves the socket to root, and says so.
func TestListenUnixUnknownGroup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, access, note, err := ListenUnix(path, "no-such-group-dhv")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if access.Group() != "" || !strings.Contains(note, "no-such-group-dhv") || !strings.Contains(note, "only root") {
		t.Fatalf("group %q, note %q", access.Group(), note)
	}
}

// invoke makes one call of method with an empty request over conn, as
// grpc-go would for a real client, and returns its status.
func invoke(t *testing.T, conn net.Conn, method string) error {
	t.Helper()
	used := false
	cc, err := grpc.NewClient("passthrough:///agent", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used {
				return nil, errors.New("the test's connection was used already")
			}
			used = true
			return conn, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()
	s, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method)
	if err != nil {
		return err
	}
	if err := s.SendMsg(&emptypb.Empty{}); err != nil && err != io.EOF {
		return err
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	for {
		if err := s.RecvMsg(&emptypb.Empty{}); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

func dialOrFail(t *testing.T, path string, c caller) net.Conn {
	t.Helper()
	conn, err := dialAs(path, c)
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	return conn
}

func dialAs(path string, c caller) (net.Conn, error) {
	return asuser.Dial(path, c.uid, c.gid, c.groups)
}
