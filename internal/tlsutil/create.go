package tlsutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/dhvisor/dhvisor/internal/atomicfile"
)

// Default validities, used when a validity is zero.
const (
	DefaultCAValidity       = 10 * 365 * 24 * time.Hour // CreateCA
	DefaultServerValidity   = 5 * 365 * 24 * time.Hour  // agent and coordinator certificates
	DefaultOperatorValidity = 365 * 24 * time.Hour      // operator certificates
	DefaultCAName           = "dhvisor cluster CA"
)

// backdate is how far before now certificates become valid, for clocks that
// lag the one that signed them.
const backdate = 5 * time.Minute

// CreateCA writes <dir>/ca.pem (0644) and <dir>/ca-key.pem (0600): an ECDSA P-256
// self-signed CA valid for validity, subject CN = name ("dhvisor cluster CA" when empty).
// Refuses to overwrite existing files (error names the file).
//
// A validity of zero means DefaultCAValidity (10 years). dir is created (0750)
// when missing.
func CreateCA(dir, name string, validity time.Duration) (certPath, keyPath string, err error) {
	if name == "" {
		name = DefaultCAName
	}
	if validity < 0 {
		return "", "", fmt.Errorf("CA validity %s is negative", validity)
	}
	if validity == 0 {
		validity = DefaultCAValidity
	}
	certPath, keyPath = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := refuseExisting(certPath, keyPath); err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	serial, err := newSerial()
	if err != nil {
		return "", "", err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"dhvisor"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true, // signs leaf certificates only
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return "", "", fmt.Errorf("sign CA certificate: %w", err)
	}
	if err := writePair(certPath, keyPath, der, key); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// CertRequest describes a certificate for CreateCert.
type CertRequest struct {
	Role Role
	// Name is the CommonName: the node name (agent, coordinator) or the
	// operator's user name. Required; letters, digits and . _ - @ only, since
	// it also names the files.
	Name string
	DNS  []string // extra DNS SANs
	IPs  []net.IP // extra IP SANs
	// Validity: 0 means DefaultServerValidity (5 years) for agent and
	// coordinator, DefaultOperatorValidity (1 year) for operator. The
	// certificate never outlives the CA: NotAfter is capped at the CA's.
	Validity time.Duration
	// KeyGroup, when not nil, gives the key to that group (mode 0640):
	// how a daemon that does not run as root (dhcoord, as dhvisor) reads
	// a key that stays root's.
	KeyGroup *int
}

// CreateCert signs a certificate for req with the CA in caCert/caKey and writes
// <dir>/<role>-<name>.pem (0644) and <dir>/<role>-<name>-key.pem (0600, or
// 0640 of group req.KeyGroup). Refuses to overwrite.
// The role goes in Subject.OrganizationalUnit (exactly one OU = the role); agent and
// coordinator certs carry ServerName(role) as DNS SAN plus "localhost", 127.0.0.1 and
// the extra SANs, and ExtKeyUsage ServerAuth+ClientAuth; operator certs ClientAuth only
// (and the extra SANs, if any).
func CreateCert(caCert, caKey, dir string, req CertRequest) (certPath, keyPath string, err error) {
	if _, err := ParseRole(string(req.Role)); err != nil {
		return "", "", err
	}
	if err := checkName(req.Name); err != nil {
		return "", "", err
	}
	if req.Validity < 0 {
		return "", "", fmt.Errorf("certificate validity %s is negative", req.Validity)
	}
	validity := req.Validity
	if validity == 0 {
		validity = DefaultServerValidity
		if req.Role == RoleOperator {
			validity = DefaultOperatorValidity
		}
	}
	base := string(req.Role) + "-" + req.Name
	certPath, keyPath = filepath.Join(dir, base+".pem"), filepath.Join(dir, base+"-key.pem")
	if err := refuseExisting(certPath, keyPath); err != nil {
		return "", "", err
	}
	ca, signer, err := loadCA(caCert, caKey)
	if err != nil {
		return "", "", err
	}
	now := time.Now()
	if now.After(ca.NotAfter) {
		return "", "", fmt.Errorf("CA certificate %s expired on %s", caCert, ca.NotAfter.UTC().Format(time.RFC3339))
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	serial, err := newSerial()
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         req.Name,
			Organization:       []string{"dhvisor"},
			OrganizationalUnit: []string{string(req.Role)},
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	if req.Role.IsServer() {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames = []string{ServerName(req.Role), "localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	for _, d := range req.DNS {
		if d == "" {
			return "", "", fmt.Errorf("empty DNS name")
		}
		tmpl.DNSNames = appendNew(tmpl.DNSNames, d)
	}
	for _, ip := range req.IPs {
		if ip == nil || (ip.To4() == nil && ip.To16() == nil) {
			return "", "", fmt.Errorf("invalid IP address %v", ip)
		}
		if !containsIP(tmpl.IPAddresses, ip) {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), signer)
	if err != nil {
		return "", "", fmt.Errorf("sign %s certificate with CA %s: %w", req.Role, caCert, err)
	}
	if err := writePair(certPath, keyPath, der, key); err != nil {
		return "", "", err
	}
	if req.KeyGroup != nil {
		// The key is born 0600 root's and only then opened to the group:
		// it is never readable by more than intended.
		err := os.Chown(keyPath, -1, *req.KeyGroup)
		if err == nil {
			err = os.Chmod(keyPath, 0o640)
		}
		if err != nil {
			os.Remove(keyPath)
			os.Remove(certPath)
			return "", "", fmt.Errorf("give %s to group %d: %w", keyPath, *req.KeyGroup, err)
		}
	}
	return certPath, keyPath, nil
}

// loadCA reads a CA certificate (the first in the file) and its key.
func loadCA(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	certs, err := readCerts(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate %w", err)
	}
	ca := certs[0]
	if !ca.IsCA {
		return nil, nil, fmt.Errorf("CA certificate %s: %q is not a CA certificate", certPath, ca.Subject.CommonName)
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key %w", err)
	}
	if !publicKeysEqual(ca.PublicKey, key.Public()) {
		return nil, nil, fmt.Errorf("CA key %s does not match the CA certificate in %s", keyPath, certPath)
	}
	return ca, key, nil
}

func checkName(name string) error {
	if name == "" {
		return fmt.Errorf("certificate name is required")
	}
	if name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("certificate name %q must not start with %q", name, name[0])
	}
	for _, c := range name {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '@'
		if !ok {
			return fmt.Errorf("certificate name %q: %q not allowed (letters, digits and . _ - @ only)", name, c)
		}
	}
	return nil
}

// refuseExisting fails if any of paths exists (or cannot be checked).
func refuseExisting(paths ...string) error {
	for _, p := range paths {
		_, err := os.Lstat(p)
		if err == nil {
			return fmt.Errorf("%s already exists; not overwriting it", p)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// writePair writes the key (0600) and then the certificate (0644), each
// atomically; if the certificate cannot be written the key is removed again,
// so a retry is not refused.
func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", keyPath, err)
	}
	if err := atomicfile.Write(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		os.Remove(keyPath)
		return fmt.Errorf("write %s: %w", certPath, err)
	}
	return nil
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	return n.Add(n, big.NewInt(1)), nil // positive, as RFC 5280 wants
}

func appendNew(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

func containsIP(list []net.IP, ip net.IP) bool {
	for _, x := range list {
		if x.Equal(ip) {
			return true
		}
	}
	return false
}
