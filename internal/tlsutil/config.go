package tlsutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/dhvisor/dhvisor/internal/secretfile"
)

// checkInterval is how often, at most, the files are checked for changes.
const checkInterval = time.Second

// ServerConfig: TLS 1.3 minimum, presents f's cert, requires and verifies a client
// certificate chained to f.CA, and accepts the connection only if the client's role is
// one of allowed (VerifyConnection). Plain TCP or a cert from another CA must fail the handshake.
//
// f's certificate must be an agent or coordinator certificate signed by the
// CA in f.CA and valid now; every problem with the files is reported here,
// naming the file. The files are re-read when they change (see package doc);
// new files that are bad are ignored and the last good ones kept.
func ServerConfig(f Files, allowed ...Role) (*tls.Config, error) {
	if len(allowed) == 0 {
		return nil, fmt.Errorf("tls: no client roles allowed")
	}
	for _, r := range allowed {
		if _, err := ParseRole(string(r)); err != nil {
			return nil, fmt.Errorf("tls: allowed client roles: %v", err)
		}
	}
	s, err := newSource(f, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.get().cert, nil
		},
		// The chain is verified in VerifyConnection against the CA as it is
		// now (the standard verification would use a pool fixed here). It
		// runs on every handshake, resumed ones too.
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := verifyPeer(s.get().pool, cs.PeerCertificates, x509.ExtKeyUsageClientAuth)
			if err != nil {
				return fmt.Errorf("client certificate: %w", err)
			}
			for _, r := range allowed {
				if id.Role == r {
					return nil
				}
			}
			return fmt.Errorf("client %s: role %s not allowed here (allowed: %s)", id, id.Role, joinRoles(allowed))
		},
	}, nil
}

// ClientConfig: presents f's cert, verifies the server chains to f.CA, sets ServerName =
// ServerName(server), and checks the server cert's role == server.
//
// f's certificate may have any role; it must be signed by the CA in f.CA and
// valid now. Files are re-read as for ServerConfig.
func ClientConfig(f Files, server Role) (*tls.Config, error) {
	if !server.IsServer() {
		return nil, fmt.Errorf("tls: server role %q: want agent or coordinator", server)
	}
	s, err := newSource(f, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: ServerName(server),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.get().cert, nil
		},
		// Verification is done in VerifyConnection against the CA as it is
		// now, including the host name ServerName(server); it runs on every
		// handshake, resumed ones too.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := verifyPeer(s.get().pool, cs.PeerCertificates, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return fmt.Errorf("server certificate: %w", err)
			}
			if id.Role != server {
				return fmt.Errorf("server %s: role %s, want %s", id, id.Role, server)
			}
			if err := cs.PeerCertificates[0].VerifyHostname(ServerName(server)); err != nil {
				return fmt.Errorf("server %s: %w", id, err)
			}
			return nil
		},
	}, nil
}

// verifyPeer checks that chain[0] chains to pool (with chain[1:] as
// intermediates), is valid now for usage, and carries an identity.
func verifyPeer(pool *x509.CertPool, chain []*x509.Certificate, usage x509.ExtKeyUsage) (Identity, error) {
	if len(chain) == 0 {
		return Identity{}, errors.New("none presented")
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}); err != nil {
		return Identity{}, err
	}
	return IdentityOf(leaf)
}

func joinRoles(rs []Role) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

// material is one consistent set of loaded files.
type material struct {
	cert *tls.Certificate
	pool *x509.CertPool
}

// stamp identifies a version of a file.
type stamp struct {
	mod  int64 // mtime, ns
	size int64
}

// source holds the material loaded from a Files and reloads it when the
// files change, at most once per checkInterval. Bad new files are ignored
// (the old material stays) and retried at the next check.
type source struct {
	files Files
	usage x509.ExtKeyUsage // what our own certificate must be good for

	mu     sync.Mutex
	cur    *material
	stamps [3]stamp // of the files cur was loaded from
	next   time.Time
}

func newSource(f Files, usage x509.ExtKeyUsage) (*source, error) {
	for _, c := range []struct{ field, path string }{{"tls.ca", f.CA}, {"tls.cert", f.Cert}, {"tls.key", f.Key}} {
		if c.path == "" {
			return nil, fmt.Errorf("%s is not set", c.field)
		}
	}
	st, _ := stampFiles(f) // a file that cannot be stat'ed fails in load
	m, err := load(f, usage, time.Now())
	if err != nil {
		return nil, err
	}
	return &source{files: f, usage: usage, cur: m, stamps: st, next: time.Now().Add(checkInterval)}, nil
}

func (s *source) get() *material {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if now.Before(s.next) {
		return s.cur
	}
	s.next = now.Add(checkInterval)
	st, err := stampFiles(s.files)
	if err != nil || st == s.stamps {
		return s.cur
	}
	m, err := load(s.files, s.usage, now)
	if err != nil {
		return s.cur
	}
	s.cur, s.stamps = m, st
	return s.cur
}

func stampFiles(f Files) ([3]stamp, error) {
	var st [3]stamp
	for i, p := range []string{f.CA, f.Cert, f.Key} {
		fi, err := os.Stat(p)
		if err != nil {
			return st, err
		}
		st[i] = stamp{fi.ModTime().UnixNano(), fi.Size()}
	}
	return st, nil
}

// load reads and checks f: the CA file holds CA certificates, the key
// matches the certificate, and the certificate chains to the CA, is valid at
// now for usage and carries a role (for ServerAuth: agent or coordinator,
// with its ServerName).
func load(f Files, usage x509.ExtKeyUsage, now time.Time) (*material, error) {
	cas, err := readCerts(f.CA)
	if err != nil {
		return nil, fmt.Errorf("tls.ca %w", err)
	}
	pool := x509.NewCertPool()
	for i, c := range cas {
		if !c.IsCA {
			return nil, fmt.Errorf("tls.ca %s: certificate %d (%q) is not a CA certificate", f.CA, i+1, c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	chain, err := readCerts(f.Cert)
	if err != nil {
		return nil, fmt.Errorf("tls.cert %w", err)
	}
	leaf := chain[0]
	key, err := readKey(f.Key)
	if err != nil {
		return nil, fmt.Errorf("tls.key %w", err)
	}
	if !publicKeysEqual(leaf.PublicKey, key.Public()) {
		return nil, fmt.Errorf("tls.key %s: does not match the certificate in %s", f.Key, f.Cert)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return nil, fmt.Errorf("tls.cert %s: %v", f.Cert, err)
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("tls.cert %s: %s certificate expired on %s", f.Cert, id, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("tls.cert %s: %s certificate not valid before %s (check the clock)", f.Cert, id, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	dnsName := ""
	if usage == x509.ExtKeyUsageServerAuth {
		if !id.Role.IsServer() {
			return nil, fmt.Errorf("tls.cert %s: %s certificate cannot serve; want an agent or coordinator certificate", f.Cert, id)
		}
		dnsName = ServerName(id.Role)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: dnsName, KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: now})
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	var hn x509.HostnameError
	switch {
	case err == nil:
	case errors.As(err, &ua):
		return nil, fmt.Errorf("tls.cert %s: %s certificate not signed by the CA in %s", f.Cert, id, f.CA)
	case errors.As(err, &hn):
		return nil, fmt.Errorf("tls.cert %s: %s certificate lacks the DNS name %s", f.Cert, id, dnsName)
	case errors.As(err, &ci) && ci.Reason == x509.IncompatibleUsage:
		what := map[x509.ExtKeyUsage]string{x509.ExtKeyUsageServerAuth: "server", x509.ExtKeyUsageClientAuth: "client"}[usage]
		return nil, fmt.Errorf("tls.cert %s: %s certificate not usable for %s authentication", f.Cert, id, what)
	default:
		return nil, fmt.Errorf("tls.cert %s: %s certificate does not verify against the CA in %s: %v", f.Cert, id, f.CA, err)
	}
	return &material{
		cert: &tls.Certificate{Certificate: derOf(chain), PrivateKey: key, Leaf: leaf},
		pool: pool,
	}, nil
}

// readCerts returns the certificates in a PEM file, at least one; errors
// start with the path.
func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, readError(path, err)
	}
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			if strings.HasSuffix(b.Type, "PRIVATE KEY") {
				return nil, fmt.Errorf("%s: holds a private key, want a certificate", path)
			}
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %v", path, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no certificate found (want PEM \"CERTIFICATE\")", path)
	}
	return certs, nil
}

// readKey returns the first private key in a PEM file (PKCS#8, SEC 1 or
// PKCS#1); errors start with the path. A key file others may read or
// replace is refused (secretfile's rule), so a daemon never starts on a
// key that has already leaked.
func readKey(path string) (crypto.Signer, error) {
	data, err := secretfile.Read(path)
	if err != nil {
		return nil, err
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("%s: no private key found (want PEM \"PRIVATE KEY\")", path)
		}
		var k any
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("%s: encrypted private keys are not supported", path)
		case "CERTIFICATE":
			return nil, fmt.Errorf("%s: holds a certificate, want a private key", path)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
		switch k := k.(type) {
		case *ecdsa.PrivateKey:
			return k, nil
		case *rsa.PrivateKey:
			return k, nil
		case ed25519.PrivateKey:
			return k, nil
		}
		return nil, fmt.Errorf("%s: unsupported private key type %T", path, k)
	}
}

// readError is "path: reason" for a failed read, without repeating the path.
func readError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", path, pe.Err)
	}
	return fmt.Errorf("%s: %w", path, err)
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

func derOf(chain []*x509.Certificate) [][]byte {
	out := make([][]byte, len(chain))
	for i, c := range chain {
		out[i] = c.Raw
	}
	return out
}
