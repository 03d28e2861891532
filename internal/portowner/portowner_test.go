package portowner

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseInet(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the literal lines below are a little-endian kernel's")
	}
	const tcp = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1FBF 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 4242 1 0000000034057c3f 100 0 0 10 0
   1: 00000000:1FC1 0500000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000034057c3f 100 0 0 10 0
   2: garbage
`
	socks, err := ParseInet([]byte(tcp))
	if err == nil || !strings.Contains(err.Error(), "line 4: 2 fields") {
		t.Errorf("error %v, want line 4 named", err)
	}
	want := []Socket{
		{Local: netip.MustParseAddrPort("127.0.0.1:8127"), State: tcpListen, UID: 1001, Inode: 4242},
		{Local: netip.MustParseAddrPort("0.0.0.0:8129"), State: 1, UID: 0, Inode: 77},
	}
	if len(socks) != len(want) || socks[0] != want[0] || socks[1] != want[1] {
		t.Errorf("got %+v\nwant %+v", socks, want)
	}
	const tcp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1FBF 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000500000A:1FBF 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 98 1 0000000000000000 100 0 0 10 0
`
	socks, err = ParseInet([]byte(tcp6))
	if err != nil || len(socks) != 2 || socks[0].Local != netip.MustParseAddrPort("[::1]:8127") || socks[1].Local.Addr().Unmap() != netip.MustParseAddr("10.0.0.5") {
		t.Errorf("got %+v, %v", socks, err)
	}
}

func TestParseUnix(t *testing.T) {
	const unix = `Num       RefCount Protocol Flags    Type St Inode Path
00000000ba8ec0a1: 00000002 00000000 00010000 0001 01 18730 /run/dhvisor/agent.sock
00000000845ae438: 00000003 00000000 00000000 0001 03 54129
0000000011111111: 00000002 00000000 00010000 0001 01 54130 /tmp/a path with blanks
0000000022222222: 00000002 00000000 00010000 0001 01 54131 @abstract
`
	got := ParseUnix([]byte(unix))
	want := []Socket{
		{Path: "/run/dhvisor/agent.sock", Listening: true, UID: -1, Inode: 18730},
		{Path: "/tmp/a path with blanks", Listening: true, UID: -1, Inode: 54130},
		{Path: "@abstract", Listening: true, UID: -1, Inode: 54131},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

// A port this process holds: the second listen fails, and Explain names
// this process, on every address form that collides.
func TestExplainTCP(t *testing.T) {
	for _, tc := range []struct{ hold, again string }{
		{"127.0.0.1:0", "127.0.0.1:%d"},
		{"127.0.0.1:0", "0.0.0.0:%d"},
		{"[::1]:0", "[::1]:%d"},
		{"0.0.0.0:0", "127.0.0.1:%d"},
	} {
		l, err := net.Listen("tcp", tc.hold)
		if err != nil {
			// A host without IPv6 loopback cannot hold [::1]; CI's can.
			if os.Getenv("CI") == "true" || !strings.HasPrefix(tc.hold, "[") {
				t.Fatalf("%s: %v", tc.hold, err)
			}
			t.Logf("%s: %v; case left out", tc.hold, err)
			continue
		}
		port := l.Addr().(*net.TCPAddr).Port
		again := strings.Replace(tc.again, "%d", strconv.Itoa(port), 1)
		_, err = net.Listen("tcp", again)
		if err == nil {
			l.Close()
			t.Fatalf("second listen on %s succeeded", again)
		}
		err = Explain(err, again)
		l.Close()
		var iu *InUseError
		if !errors.As(err, &iu) || !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("%s: %v (%T), want an InUseError wrapping EADDRINUSE", again, err, err)
		}
		if len(iu.Owners) != 1 || iu.Owners[0].PID != os.Getpid() {
			t.Errorf("%s: owners %+v, want this process %d", again, iu.Owners, os.Getpid())
		}
		if want := "listen " + again + ": address in use by pid " + strconv.Itoa(os.Getpid()) + " ("; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q, want it to start %q", err, want)
		}
	}
}

func TestExplainUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var iu *InUseError
	if err := InUse(path); !errors.As(err, &iu) || len(iu.Owners) != 1 || iu.Owners[0].PID != os.Getpid() {
		t.Errorf("%v: want this process named", err)
	}
}

func TestExplainOtherErrors(t *testing.T) {
	other := errors.New("permission denied")
	if got := Explain(other, "0.0.0.0:80"); got != other {
		t.Errorf("got %v, want the error as it was", got)
	}
	if Explain(nil, "x") != nil {
		t.Error("nil became an error")
	}
	// memberlist formats the cause with %v: only the text says.
	var iu *InUseError
	if err := Explain(errors.New("failed to start TCP listener on \"0.0.0.0\" port 1: listen tcp 0.0.0.0:1: bind: address already in use"), "0.0.0.0:1"); !errors.As(err, &iu) {
		t.Errorf("%v: want an InUseError", err)
	}
}

// What each case says, from what /proc could tell.
func TestInUseMessage(t *testing.T) {
	java := Owner{PID: 1234, Comm: "java", Name: "configuration_server", Cmdline: "java -Dprocess.name=configuration_server", UID: 1001, User: "irisadmin"}
	tests := []struct {
		e    InUseError
		want string
	}{
		{InUseError{Addr: "0.0.0.0:8127", Owners: []Owner{java}}, "listen 0.0.0.0:8127: address in use by pid 1234 (configuration_server, user irisadmin): java -Dprocess.name=configuration_server"},
		{InUseError{Addr: "0.0.0.0:8127", Owners: []Owner{{PID: 7, Name: "nc", Cmdline: "nc", User: "root"}, {PID: 8, Name: "nc", Cmdline: "nc", User: "root"}}}, "listen 0.0.0.0:8127: address in use by pid 7 (nc, user root); by pid 8 (nc, user root)"},
		{InUseError{Addr: "0.0.0.0:8127", SocketUIDs: []int{0}, Hidden: 3}, "listen 0.0.0.0:8127: address in use by a socket of user root, but its process is not visible (3 processes' descriptors could not be read: run as root to name it)"},
		{InUseError{Addr: "/run/dhvisor/agent.sock"}, "listen /run/dhvisor/agent.sock: address in use, but /proc shows no socket holding it"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); !strings.HasPrefix(got, tt.want) {
			t.Errorf("got  %q\nwant %q", got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"  sl  local_address\n   0: 0100007F:1FBF 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 4242 1\n",
		"h\n   0: 00000000000000000000000001000000:1FBF 0:0 0A 0 0 0 0 0 99\n",
		"h\n0: 1:1 2 3 4 5 6 7 8 9\n",
		"Num\n00000000ba8ec0a1: 00000002 00000000 00010000 0001 01 18730 /a b\n",
		"\n\n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		socks, _ := ParseInet(data)
		for _, s := range socks {
			if !s.Local.IsValid() || s.UID < 0 {
				t.Fatalf("socket %+v", s)
			}
		}
		for _, s := range ParseUnix(data) {
			if s.Path == "" || strings.ContainsRune(s.Path, '\n') {
				t.Fatalf("unix socket %+v", s)
			}
		}
	})
}
