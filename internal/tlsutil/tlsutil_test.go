package tlsutil

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dhvisor/dhvisor/internal/atomicfile"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pki is a CA in a temporary directory.
type pki struct {
	dir, ca, caKey string
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	dir := t.TempDir()
	ca, key, err := CreateCA(dir, name, 0)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{dir: dir, ca: ca, caKey: key}
}

// issue makes a certificate in a fresh directory (so one name can be issued
// twice) and returns its Files.
func (p *pki) issue(t *testing.T, role Role, name string) Files {
	t.Helper()
	return p.issueReq(t, CertRequest{Role: role, Name: name})
}

func (p *pki) issueReq(t *testing.T, req CertRequest) Files {
	t.Helper()
	cert, key, err := CreateCert(p.ca, p.caKey, t.TempDir(), req)
	if err != nil {
		t.Fatal(err)
	}
	return Files{CA: p.ca, Cert: cert, Key: key}
}

// served is what the test server saw of one connection.
type served struct {
	id  string // client identity and certificate serial
	err error  // handshake error
}

// serve accepts TLS connections with cfg; for each it reports the handshake
// result and, on success, writes "role:name serial\n" to the client.
func serve(t *testing.T, cfg *tls.Config) (string, <-chan served) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan served, 16)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				tc := tls.Server(c, cfg)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := tc.HandshakeContext(ctx); err != nil {
					results <- served{err: err}
					return
				}
				leaf := tc.ConnectionState().PeerCertificates[0]
				id, err := IdentityOf(leaf)
				if err != nil {
					results <- served{err: err}
					return
				}
				line := id.String() + " " + leaf.SerialNumber.String()
				results <- served{id: line}
				io.WriteString(tc, line+"\n")
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String(), results
}

// dial connects with cfg and returns the line the server wrote and the
// server certificate's serial.
func dial(addr string, cfg *tls.Config) (line, serverSerial string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	serverSerial = c.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.String()
	line, err = bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), serverSerial, err
}

func result(t *testing.T, ch <-chan served) served {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("server saw no connection")
		return served{}
	}
}

func serial(t *testing.T, f Files) string {
	t.Helper()
	certs, err := readCerts(f.Cert)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0].SerialNumber.String()
}

func TestHandshakes(t *testing.T) {
	a, b := newPKI(t, "A"), newPKI(t, "B")
	agent := a.issue(t, RoleAgent, "n1")
	coord := a.issue(t, RoleCoordinator, "c1")
	alice := a.issue(t, RoleOperator, "alice")
	mallory := b.issue(t, RoleOperator, "mallory")
	// Mallory trusts A (so she accepts the server) and B (so her own files
	// load), but her certificate is from B.
	mallory.CA = filepath.Join(t.TempDir(), "ab.pem")
	if err := os.WriteFile(mallory.CA, append(mustRead(t, a.ca), mustRead(t, b.ca)...), 0o644); err != nil {
		t.Fatal(err)
	}
	evilAgent := b.issue(t, RoleAgent, "n1") // a server of CA B

	all := []Role{RoleAgent, RoleCoordinator, RoleOperator}
	for _, tc := range []struct {
		name      string
		server    Files
		allowed   []Role
		client    Files // zero: plain TCP
		want      Role  // the server role the client expects
		wantID    string
		serverErr string // refused: the server's handshake error contains this
		clientErr string // and the client's error contains this
	}{
		{name: "operator to agent", server: agent, allowed: all, client: alice, want: RoleAgent, wantID: "operator:alice"},
		{name: "agent to coordinator", server: coord, allowed: []Role{RoleAgent, RoleCoordinator}, client: agent, want: RoleCoordinator, wantID: "agent:n1"},
		{name: "coordinator to agent", server: agent, allowed: []Role{RoleCoordinator, RoleOperator}, client: coord, want: RoleAgent, wantID: "coordinator:c1"},
		{name: "plain TCP", server: agent, allowed: all, serverErr: "tls"},
		{name: "client from another CA", server: agent, allowed: all, client: mallory, want: RoleAgent,
			serverErr: "client certificate: x509: certificate signed by unknown authority", clientErr: "tls"},
		{name: "client role not allowed", server: coord, allowed: []Role{RoleAgent, RoleCoordinator}, client: alice, want: RoleCoordinator,
			serverErr: "client operator:alice: role operator not allowed here (allowed: agent, coordinator)", clientErr: "tls"},
		{name: "server of the wrong role", server: agent, allowed: all, client: alice, want: RoleCoordinator,
			serverErr: "tls", clientErr: "server agent:n1: role agent, want coordinator"},
		{name: "server from another CA", server: evilAgent, allowed: all, client: alice, want: RoleAgent,
			serverErr: "tls", clientErr: "server certificate: x509: certificate signed by unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scfg, err := ServerConfig(tc.server, tc.allowed...)
			if err != nil {
				t.Fatal(err)
			}
			addr, results := serve(t, scfg)

			if tc.client.IsZero() {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				io.WriteString(c, "hello\n")
				c.SetDeadline(time.Now().Add(5 * time.Second))
				got, _ := io.ReadAll(c)
				if r := result(t, results); r.err == nil || !strings.Contains(r.err.Error(), tc.serverErr) {
					t.Errorf("server: %+v, want error containing %q", r, tc.serverErr)
				}
				if strings.Contains(string(got), ":") {
					t.Errorf("plain client read %q", got)
				}
				return
			}

			ccfg, err := ClientConfig(tc.client, tc.want)
			if err != nil {
				t.Fatal(err)
			}
			line, _, cerr := dial(addr, ccfg)
			r := result(t, results)
			if tc.wantID != "" {
				if cerr != nil || r.err != nil {
					t.Fatalf("client error %v, server error %v", cerr, r.err)
				}
				if !strings.HasPrefix(line, tc.wantID+" ") || line != r.id {
					t.Errorf("client read %q, server saw %q, want identity %s", line, r.id, tc.wantID)
				}
				return
			}
			if r.err == nil || !strings.Contains(r.err.Error(), tc.serverErr) {
				t.Errorf("server: %+v, want error containing %q", r, tc.serverErr)
			}
			if cerr == nil || !strings.Contains(cerr.Error(), tc.clientErr) {
				t.Errorf("client: read %q, error %v; want error containing %q", line, cerr, tc.clientErr)
			}
			if line != "" {
				t.Errorf("refused client read %q", line)
			}
		})
	}
}

// copyFiles replaces dst's certificate and key with src's, key first.
func copyFiles(t *testing.T, src, dst Files) {
	t.Helper()
	for _, p := range [][2]string{{src.Key, dst.Key}, {src.Cert, dst.Cert}} {
		data, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := atomicfile.Write(p[1], data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRotation(t *testing.T) {
	a := newPKI(t, "A")
	agent := a.issue(t, RoleAgent, "n1")
	alice := a.issue(t, RoleOperator, "alice")
	scfg, err := ServerConfig(agent, RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := ClientConfig(alice, RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	addr, results := serve(t, scfg)

	check := func(step string, wantServer, wantClient string) {
		t.Helper()
		line, srv, err := dial(addr, ccfg)
		r := result(t, results)
		if err != nil || r.err != nil {
			t.Fatalf("%s: client error %v, server error %v", step, err, r.err)
		}
		if srv != wantServer {
			t.Errorf("%s: server presented serial %s, want %s", step, srv, wantServer)
		}
		if want := "operator:alice " + wantClient; line != want {
			t.Errorf("%s: server saw %q, want %q", step, line, want)
		}
	}
	check("start", serial(t, agent), serial(t, alice))

	// New certificates for both ends, same paths.
	agent2, alice2 := a.issue(t, RoleAgent, "n1"), a.issue(t, RoleOperator, "alice")
	copyFiles(t, agent2, agent)
	copyFiles(t, alice2, alice)
	time.Sleep(checkInterval + 100*time.Millisecond)
	check("rotated", serial(t, agent2), serial(t, alice2))

	// Bad new files are ignored: the last good pair stays in use.
	if err := atomicfile.Write(agent.Cert, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	other := a.issue(t, RoleOperator, "alice")
	if err := atomicfile.Write(alice.Key, mustRead(t, other.Key), 0o600); err != nil { // key without its certificate
		t.Fatal(err)
	}
	time.Sleep(checkInterval + 100*time.Millisecond)
	check("bad files", serial(t, agent2), serial(t, alice2))

	// CA rotation: the server trusts old and new CA; a client with a
	// certificate from the new CA is accepted.
	b := newPKI(t, "B")
	copyFiles(t, agent2, agent)
	bundle := append(mustRead(t, a.ca), mustRead(t, b.ca)...)
	if err := atomicfile.Write(agent.CA, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	bob := b.issue(t, RoleOperator, "bob")
	bob.CA = a.ca // the server's certificate is still from A
	bcfg, err := ClientConfig(bob, RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(checkInterval + 100*time.Millisecond)
	line, _, err := dial(addr, bcfg)
	r := result(t, results)
	if err != nil || r.err != nil || !strings.HasPrefix(line, "operator:bob ") {
		t.Errorf("after CA rotation: read %q, client error %v, server error %v", line, err, r.err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConfigErrors(t *testing.T) {
	a, b := newPKI(t, "A"), newPKI(t, "B")
	agent := a.issue(t, RoleAgent, "n1")
	alice := a.issue(t, RoleOperator, "alice")
	foreign := b.issue(t, RoleAgent, "n2")
	expired := a.issueReq(t, CertRequest{Role: RoleAgent, Name: "old", Validity: time.Nanosecond})
	empty := filepath.Join(t.TempDir(), "empty.pem")
	os.WriteFile(empty, nil, 0o600)
	// A certificate where the key should be, private so that what is
	// refused is its content.
	certAsKey := filepath.Join(t.TempDir(), "cert.pem")
	os.WriteFile(certAsKey, mustRead(t, alice.Cert), 0o600)
	// A key others may read: refused, naming the file and its mode.
	leaked := filepath.Join(t.TempDir(), "leaked-key.pem")
	os.WriteFile(leaked, mustRead(t, agent.Key), 0o600)
	os.Chmod(leaked, 0o644)
	groupWritable := filepath.Join(t.TempDir(), "gw-key.pem")
	os.WriteFile(groupWritable, mustRead(t, agent.Key), 0o600)
	os.Chmod(groupWritable, 0o660)

	with := func(f Files, change func(*Files)) Files { change(&f); return f }
	for _, tc := range []struct {
		name   string
		client bool
		files  Files
		want   string
	}{
		{"ca missing", false, with(agent, func(f *Files) { f.CA = "/nonexistent/ca.pem" }), "tls.ca /nonexistent/ca.pem: no such file or directory"},
		{"ca not set", false, with(agent, func(f *Files) { f.CA = "" }), "tls.ca is not set"},
		{"key not set", true, with(alice, func(f *Files) { f.Key = "" }), "tls.key is not set"},
		{"cert empty", false, with(agent, func(f *Files) { f.Cert = empty }), "tls.cert " + empty + ": no certificate found"},
		{"cert is a key", false, with(agent, func(f *Files) { f.Cert = agent.Key }), "tls.cert " + agent.Key + ": holds a private key"},
		{"key is a cert", true, with(alice, func(f *Files) { f.Key = certAsKey }), "tls.key " + certAsKey + ": holds a certificate"},
		{"key world readable", false, with(agent, func(f *Files) { f.Key = leaked }), "tls.key " + leaked + " has mode 0644"},
		{"key group writable", false, with(agent, func(f *Files) { f.Key = groupWritable }), "tls.key " + groupWritable + " has mode 0660"},
		{"key empty", true, with(alice, func(f *Files) { f.Key = empty }), "tls.key " + empty + ": no private key found"},
		{"key mismatch", false, with(agent, func(f *Files) { f.Key = alice.Key }), "tls.key " + alice.Key + ": does not match the certificate in " + agent.Cert},
		{"ca is a leaf", false, with(agent, func(f *Files) { f.CA = agent.Cert }), "tls.ca " + agent.Cert + `: certificate 1 ("n1") is not a CA certificate`},
		{"other CA", false, with(foreign, func(f *Files) { f.CA = a.ca }), "tls.cert " + foreign.Cert + ": agent:n2 certificate not signed by the CA in " + a.ca},
		{"other CA, client", true, with(foreign, func(f *Files) { f.CA = a.ca }), "not signed by the CA in " + a.ca},
		{"expired", false, expired, "tls.cert " + expired.Cert + ": agent:old certificate expired on "},
		{"operator serving", false, alice, "tls.cert " + alice.Cert + ": operator:alice certificate cannot serve"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.client {
				_, err = ClientConfig(tc.files, RoleAgent)
			} else {
				_, err = ServerConfig(tc.files, RoleOperator)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if _, err := ServerConfig(agent); err == nil {
		t.Error("ServerConfig with no allowed roles succeeded")
	}
	if _, err := ServerConfig(agent, "admin"); err == nil {
		t.Error("ServerConfig allowing an unknown role succeeded")
	}
	if _, err := ClientConfig(alice, RoleOperator); err == nil {
		t.Error("ClientConfig for an operator server succeeded")
	}
}

func TestCreate(t *testing.T) {
	dir := t.TempDir()
	ca, caKey, err := CreateCA(dir, "", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if ca != filepath.Join(dir, "ca.pem") || caKey != filepath.Join(dir, "ca-key.pem") {
		t.Errorf("CA paths %s %s", ca, caKey)
	}
	if _, _, err := CreateCA(dir, "again", 0); err == nil || !strings.Contains(err.Error(), ca+" already exists") {
		t.Errorf("second CreateCA: %v", err)
	}
	caCerts, err := readCerts(ca)
	if err != nil {
		t.Fatal(err)
	}
	if cn := caCerts[0].Subject.CommonName; cn != DefaultCAName || !caCerts[0].IsCA {
		t.Errorf("CA %q IsCA %v", cn, caCerts[0].IsCA)
	}

	year := 365 * 24 * time.Hour
	for _, tc := range []struct {
		req      CertRequest
		file     string
		dns      []string
		ips      []string
		usage    []x509.ExtKeyUsage
		validity time.Duration // want NotAfter ≈ now + validity
	}{
		{CertRequest{Role: RoleAgent, Name: "n1.example.com", DNS: []string{"n1.example.com"}, IPs: []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("127.0.0.1")}, Validity: time.Hour},
			"agent-n1.example.com", []string{"agent.dhvisor", "localhost", "n1.example.com"}, []string{"127.0.0.1", "10.0.0.1"},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, time.Hour},
		{CertRequest{Role: RoleCoordinator, Name: "c1"},
			"coordinator-c1", []string{"coordinator.dhvisor", "localhost"}, []string{"127.0.0.1"},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, 48 * time.Hour}, // capped at the CA
		{CertRequest{Role: RoleOperator, Name: "alice@corp"},
			"operator-alice@corp", nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, 48 * time.Hour},
	} {
		t.Run(tc.file, func(t *testing.T) {
			cert, key, err := CreateCert(ca, caKey, dir, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if cert != filepath.Join(dir, tc.file+".pem") || key != filepath.Join(dir, tc.file+"-key.pem") {
				t.Errorf("paths %s %s", cert, key)
			}
			for p, mode := range map[string]os.FileMode{cert: 0o644, key: 0o600} {
				if st, err := os.Stat(p); err != nil || st.Mode().Perm() != mode {
					t.Errorf("%s: %v mode %v, want %o", p, err, st.Mode().Perm(), mode)
				}
			}
			if _, _, err := CreateCert(ca, caKey, dir, tc.req); err == nil || !strings.Contains(err.Error(), cert+" already exists") {
				t.Errorf("second CreateCert: %v", err)
			}
			certs, err := readCerts(cert)
			if err != nil {
				t.Fatal(err)
			}
			c := certs[0]
			if got := c.Subject.OrganizationalUnit; len(got) != 1 || got[0] != string(tc.req.Role) {
				t.Errorf("OU %q", got)
			}
			if id, err := IdentityOf(c); err != nil || id != (Identity{tc.req.Role, tc.req.Name}) {
				t.Errorf("IdentityOf: %v %v", id, err)
			}
			if strings.Join(c.DNSNames, ",") != strings.Join(tc.dns, ",") {
				t.Errorf("DNS SANs %q, want %q", c.DNSNames, tc.dns)
			}
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			if strings.Join(ips, ",") != strings.Join(tc.ips, ",") {
				t.Errorf("IP SANs %q, want %q", ips, tc.ips)
			}
			if len(c.ExtKeyUsage) != len(tc.usage) || c.ExtKeyUsage[0] != tc.usage[0] || c.ExtKeyUsage[len(c.ExtKeyUsage)-1] != tc.usage[len(tc.usage)-1] {
				t.Errorf("ExtKeyUsage %v, want %v", c.ExtKeyUsage, tc.usage)
			}
			if d := time.Until(c.NotAfter) - tc.validity; d > time.Minute || d < -time.Minute {
				t.Errorf("NotAfter %s, want about now + %s", c.NotAfter, tc.validity)
			}
			if c.NotAfter.After(caCerts[0].NotAfter) {
				t.Errorf("certificate outlives its CA")
			}
		})
	}

	// Default validities, with a CA that outlives them.
	p := newPKI(t, "long")
	for role, want := range map[Role]time.Duration{RoleAgent: 5 * year, RoleOperator: year} {
		f := p.issue(t, role, "x")
		certs, _ := readCerts(f.Cert)
		if d := time.Until(certs[0].NotAfter) - want; d > time.Minute || d < -time.Minute {
			t.Errorf("%s default NotAfter %s, want about now + %s", role, certs[0].NotAfter, want)
		}
	}

	for _, req := range []CertRequest{
		{Role: RoleAgent},
		{Role: RoleAgent, Name: "../etc"},
		{Role: RoleAgent, Name: "a b"},
		{Role: RoleAgent, Name: ".hidden"},
		{Role: "admin", Name: "x"},
		{Role: RoleAgent, Name: "x", Validity: -time.Hour},
	} {
		if _, _, err := CreateCert(ca, caKey, dir, req); err == nil {
			t.Errorf("CreateCert(%+v) succeeded", req)
		}
	}
	// The CA key must belong to the CA certificate.
	if _, _, err := CreateCert(ca, p.caKey, dir, CertRequest{Role: RoleAgent, Name: "y"}); err == nil || !strings.Contains(err.Error(), "does not match the CA certificate") {
		t.Errorf("CreateCert with a foreign CA key: %v", err)
	}
}

func TestIdentityOf(t *testing.T) {
	for _, tc := range []struct {
		ou   []string
		cn   string
		want string // "" means error
	}{
		{[]string{"operator"}, "alice", "operator:alice"},
		{[]string{"agent"}, "n1", "agent:n1"},
		{nil, "alice", ""},
		{[]string{"operator", "agent"}, "alice", ""},
		{[]string{"admin"}, "alice", ""},
		{[]string{"agent"}, "", ""},
	} {
		id, err := IdentityOf(&x509.Certificate{Subject: pkix.Name{CommonName: tc.cn, OrganizationalUnit: tc.ou}})
		if (err == nil) != (tc.want != "") || (err == nil && id.String() != tc.want) {
			t.Errorf("IdentityOf(OU %q, CN %q) = %v, %v; want %q", tc.ou, tc.cn, id, err, tc.want)
		}
	}
	if _, err := IdentityOf(nil); err == nil {
		t.Error("IdentityOf(nil) succeeded")
	}
}

func TestParseRole(t *testing.T) {
	for _, s := range []string{"agent", "coordinator", "operator"} {
		if r, err := ParseRole(s); err != nil || string(r) != s {
			t.Errorf("ParseRole(%q) = %q, %v", s, r, err)
		}
	}
	for _, s := range []string{"", "Agent", "admin"} {
		if _, err := ParseRole(s); err == nil {
			t.Errorf("ParseRole(%q) succeeded", s)
		}
	}
	if ServerName(RoleAgent) != "agent.dhvisor" || ServerName(RoleCoordinator) != "coordinator.dhvisor" {
		t.Error("ServerName")
	}
	if !(Files{}).IsZero() || (Files{CA: "x"}).IsZero() {
		t.Error("IsZero")
	}
}
