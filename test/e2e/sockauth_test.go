package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
	"github.com/dhvisor/dhvisor/test/asuser"
	"github.com/dhvisor/dhvisor/test/need"
)

// TestSocketGroupReadsAndControlsOnly: the real dhctl run as a member of
// the agent's socket group (nobody, socket_group nogroup) reads status and
// controls services, and is refused with the reason for every change to
// the node (reload, gossip keys, installs, worker registration); a user
// outside the group cannot connect at all.
func TestSocketGroupReadsAndControlsOnly(t *testing.T) {
	need.Root(t, "to run dhctl as other users")
	t.Parallel()
	n := newNodeNoStart(t, fmt.Sprintf(`
socket_group: nogroup
services:
  svc: {ports: {http: %d}}
`, freePorts(t, 1)[0]))
	// nobody must reach the socket and the binaries through the test's
	// directories.
	for _, d := range []string{filepath.Dir(n.dir), n.dir, binDir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	n.startAgent()
	n.eventually(10*time.Second, "svc OK", n.allOK(1))
	fi, err := os.Stat(n.socket)
	if err != nil || fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != 65534 {
		t.Fatalf("socket %v %v: want mode 0660, group nogroup", fi.Mode(), err)
	}
	const nobody, nogroup, daemonGroup = 65534, 65534, 1
	as := func(uid, gid uint32, groups []uint32, args ...string) (string, int) {
		cmd := n.dhctlCmd(args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
		cmd.Stdin = strings.NewReader("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
		return n.run(cmd)
	}
	member := func(args ...string) (string, int) { return as(nobody, nogroup, []uint32{}, args...) }

	for _, args := range [][]string{
		{"status"},
		{"status", "svc"},
		{"nodes"},
		{"stop", "svc", "--block"},
		{"start", "svc", "--block"},
		{"restart", "svc", "--block"},
		{"unmonitor", "svc"},
		{"monitor", "svc"},
		{"down", "--block"},
		{"up", "--block"},
	} {
		if out, code := member(args...); code != 0 {
			t.Errorf("dhctl %s as a socket-group member: exit %d\n%s", strings.Join(args, " "), code, out)
		}
	}
	// In the group by a supplementary group, as `usermod -aG` makes an
	// admin one.
	if out, code := as(nobody, daemonGroup, []uint32{nogroup}, "status"); code != 0 {
		t.Errorf("dhctl status as a member by supplementary group: exit %d\n%s", code, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"reload"}, "Reload needs root (caller uid 65534 nobody, groups nogroup)"},
		{[]string{"gossip", "keys", "list"}, "GossipKeys needs root (caller uid 65534 nobody, groups nogroup)"},
		{[]string{"gossip", "keys", "install"}, "GossipKeys needs root (caller uid 65534 nobody, groups nogroup)"},
		{[]string{"gossip", "keys", "remove", "0123abcd"}, "GossipKeys needs root (caller uid 65534 nobody, groups nogroup)"},
	} {
		out, code := member(tc.args...)
		if code == 0 || !strings.Contains(out, tc.want) {
			t.Errorf("dhctl %s as a socket-group member: exit %d\n%s\nwant it refused: %s", strings.Join(tc.args, " "), code, out, tc.want)
		}
	}
	if out, code := as(nobody, daemonGroup, []uint32{}, "status"); code != 2 || !strings.Contains(out, "run dhctl as root, or as a member of that group") {
		t.Errorf("dhctl status outside the socket group: exit %d\n%s", code, out)
	}

	// What dhctl does not call on the local socket, a group member's own
	// client is refused too; its log read goes through.
	conn, err := asuser.Dial(n.socket, nobody, nogroup, nil)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("passthrough:///agent", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return conn, nil }))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := pb.NewAgentClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	drain := func(s interface{ RecvMsg(any) error }, err error) error {
		for err == nil {
			err = s.RecvMsg(new(pb.InstallProgress))
		}
		if err == io.EOF {
			return nil
		}
		return err
	}
	inst, err := c.Install(ctx, &pb.InstallRequest{OpToken: "t1", Package: &pb.PackageRef{Path: "/tmp/evil.deb"}})
	if err := drain(inst, err); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "Install needs root (caller uid 65534 nobody") {
		t.Errorf("Install as a socket-group member: %v", err)
	}
	if _, err := c.RegisterWorkers(ctx, &pb.RegisterWorkersRequest{Dispatcher: "svc"}); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "RegisterWorkers needs root") {
		t.Errorf("RegisterWorkers as a socket-group member: %v", err)
	}
	// (The stand-in writes its own log file, which the runtime does not
	// keep: that answer comes from the handler.)
	logs, err := c.Logs(ctx, &pb.LogsRequest{Service: "svc", Tail: 5})
	if err := drain(logs, err); status.Code(err) == codes.PermissionDenied {
		t.Errorf("Logs as a socket-group member: %v", err)
	}

	// Root still does everything.
	if out, code := n.dhctl("reload"); code != 0 {
		t.Errorf("dhctl reload as root: exit %d\n%s", code, out)
	}
	if st := n.mustStatus(); st["svc"].State != "OK" {
		t.Errorf("svc after the calls: %s", st["svc"].State)
	}
}
