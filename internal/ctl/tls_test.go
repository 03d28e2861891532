package ctl

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
)

// run runs dhctl args and returns the lines it printed.
func run(t *testing.T, wantCode int, args ...string) ([]string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := Execute(args, &out, &errOut); code != wantCode {
		t.Fatalf("dhctl %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, wantCode, out.String(), errOut.String())
	}
	return strings.Fields(out.String()), errOut.String()
}

func TestTLSCommands(t *testing.T) {
	dir := t.TempDir()
	caOut, caErr := run(t, ExitOK, "tls", "ca", "create", "--dir", dir, "--days", "30")
	if want := []string{filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")}; strings.Join(caOut, " ") != strings.Join(want, " ") {
		t.Fatalf("ca create printed %q, want %q", caOut, want)
	}
	if !strings.Contains(caErr, "keep it off the nodes") {
		t.Errorf("ca create does not say where the CA key belongs: %q", caErr)
	}
	agentOut, _ := run(t, ExitOK, "tls", "cert", "create", "--agent", "--name", "n1", "--dir", dir, "--ip", "10.0.0.1", "--dns", "n1.example.com")
	if want := []string{filepath.Join(dir, "agent-n1.pem"), filepath.Join(dir, "agent-n1-key.pem")}; strings.Join(agentOut, " ") != strings.Join(want, " ") {
		t.Fatalf("cert create printed %q, want %q", agentOut, want)
	}
	// The operator's name defaults to $USER; the CA is named explicitly.
	t.Setenv("USER", "alice")
	opDir := t.TempDir()
	opOut, _ := run(t, ExitOK, "tls", "cert", "create", "--operator", "--dir", opDir, "--ca", caOut[0], "--ca-key", caOut[1], "--days", "7")
	if want := filepath.Join(opDir, "operator-alice.pem"); len(opOut) != 2 || opOut[0] != want {
		t.Fatalf("operator cert create printed %q, want %s first", opOut, want)
	}
	// An agent's name defaults to the host name.
	if host, err := os.Hostname(); err == nil {
		out, _ := run(t, ExitOK, "tls", "cert", "create", "--coordinator", "--dir", dir)
		if want := filepath.Join(dir, "coordinator-"+host+".pem"); len(out) != 2 || out[0] != want {
			t.Errorf("coordinator cert create printed %q, want %s first", out, want)
		}
	}

	// What the help promises: certificates 0644, keys 0600.
	for _, f := range append(append([]string{}, caOut...), append(agentOut, opOut...)...) {
		want := os.FileMode(0o644)
		if strings.HasSuffix(f, "-key.pem") {
			want = 0o600
		}
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %04o", f, st.Mode().Perm(), err, want)
		}
	}
	// The CA from a directory of its own (off the node), the key given to
	// the group a non-root daemon runs as.
	nodeDir := t.TempDir()
	gid := os.Getegid()
	grp, err := user.LookupGroupId(strconv.Itoa(gid))
	if err != nil {
		t.Fatal(err)
	}
	coordOut, _ := run(t, ExitOK, "tls", "cert", "create", "--coordinator", "--name", "c1", "--ca-dir", dir, "--dir", nodeDir, "--key-group", grp.Name)
	st, err := os.Stat(coordOut[1])
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o640 || st.Sys().(*syscall.Stat_t).Gid != uint32(gid) {
		t.Errorf("--key-group %s: key mode %v gid %d, want 0640 gid %d", grp.Name, st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Gid, gid)
	}
	if _, err := tlsutil.ServerConfig(tlsutil.Files{CA: caOut[0], Cert: coordOut[0], Key: coordOut[1]}, tlsutil.RoleOperator); err != nil {
		t.Errorf("a key of the daemon's group is refused: %v", err)
	}
	if _, msg := run(t, ExitError, "tls", "cert", "create", "--agent", "--name", "n9", "--ca-dir", dir, "--dir", nodeDir, "--key-group", "no-such-group-dhv"); !strings.Contains(msg, `--key-group "no-such-group-dhv"`) {
		t.Errorf("unknown --key-group: %q", msg)
	}

	scfg, err := tlsutil.ServerConfig(tlsutil.Files{CA: caOut[0], Cert: agentOut[0], Key: agentOut[1]}, tlsutil.RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := tlsutil.ClientConfig(tlsutil.Files{CA: caOut[0], Cert: opOut[0], Key: opOut[1]}, tlsutil.RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, scfg)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			served <- err
			return
		}
		id, err := tlsutil.IdentityOf(tc.ConnectionState().PeerCertificates[0])
		if err == nil {
			_, err = io.WriteString(tc, id.String()+"\n")
		}
		served <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := (&tls.Dialer{Config: ccfg}).DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "operator:alice\n" {
		t.Errorf("client read %q, %v; want operator:alice", line, err)
	}
	if err := <-served; err != nil {
		t.Errorf("server: %v", err)
	}
	if san := c.(*tls.Conn).ConnectionState().PeerCertificates[0]; len(san.IPAddresses) != 2 || san.IPAddresses[1].String() != "10.0.0.1" || san.DNSNames[len(san.DNSNames)-1] != "n1.example.com" {
		t.Errorf("agent certificate SANs %v %v", san.DNSNames, san.IPAddresses)
	}
}

func TestTLSCommandErrors(t *testing.T) {
	dir := t.TempDir()
	run(t, ExitOK, "tls", "ca", "create", "--dir", dir)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ca", "create", "--dir", dir}, filepath.Join(dir, "ca.pem") + " already exists"},
		{[]string{"ca", "create", "--dir", dir, "--days", "0"}, "--days 0"},
		{[]string{"cert", "create", "--name", "n1", "--dir", dir}, "exactly one of --agent, --coordinator, --operator"},
		{[]string{"cert", "create", "--agent", "--operator", "--name", "n1", "--dir", dir}, "exactly one of --agent, --coordinator, --operator"},
		{[]string{"cert", "create", "--agent", "--name", "n1", "--dir", dir, "--ip", "10.0.0.300"}, `--ip "10.0.0.300": not an IP address`},
		{[]string{"cert", "create", "--agent", "--name", "../n1", "--dir", dir}, "certificate name"},
		{[]string{"cert", "create", "--agent", "--name", "n1", "--dir", t.TempDir()}, "ca.pem: no such file"},
		{[]string{"cert", "create", "--agent", "--name", "n1", "--dir", dir, "extra"}, "unknown command"},
	} {
		_, errOut := run(t, ExitError, append([]string{"tls"}, tc.args...)...)
		if !strings.Contains(errOut, tc.want) {
			t.Errorf("dhctl tls %s: stderr %q, want it to contain %q", strings.Join(tc.args, " "), errOut, tc.want)
		}
	}
	run(t, ExitOK, "tls", "cert", "create", "--agent", "--name", "n1", "--dir", dir)
	if _, errOut := run(t, ExitError, "tls", "cert", "create", "--agent", "--name", "n1", "--dir", dir); !strings.Contains(errOut, filepath.Join(dir, "agent-n1.pem")+" already exists") {
		t.Errorf("second cert create: %q", errOut)
	}
}
