// Package tlsutil is dhvisor's mutual TLS: a cluster CA, role certificates
// (agent, coordinator, operator) and the tls.Configs every TCP API uses (agent
// API, coordinator cluster API, raft transport).
//
// Identity lives in the certificate: the subject's single OrganizationalUnit
// is the role and the CommonName the name (node or user). Agent and
// coordinator certificates carry the DNS name ServerName(role), which clients
// verify instead of a host name or IP, so certificates need no per-address
// SANs and survive address changes, as Consul verifies server.<dc>.consul.
//
// Configs built here re-read their files when they change (checked at most
// once per second), so certificates and the CA bundle rotate without a
// restart.
package tlsutil

import (
	"context"
	"crypto/x509"
	"fmt"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Role is what a certificate's holder is in the cluster.
type Role string

// The roles a certificate can carry.
const (
	RoleAgent       Role = "agent"
	RoleCoordinator Role = "coordinator"
	RoleOperator    Role = "operator"
)

// Roles lists every role.
var Roles = []Role{RoleAgent, RoleCoordinator, RoleOperator}

// ParseRole accepts "agent", "coordinator", "operator".
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if s == string(r) {
			return r, nil
		}
	}
	return "", fmt.Errorf("unknown role %q (want agent, coordinator or operator)", s)
}

// IsServer reports whether r serves an API (agent or coordinator); operator
// certificates are client-only.
func (r Role) IsServer() bool { return r == RoleAgent || r == RoleCoordinator }

// ServerName is the DNS SAN every agent or coordinator certificate carries
// ("agent.dhvisor", "coordinator.dhvisor") and that clients verify instead of
// a host name or IP (as Consul verifies server.<dc>.consul), so certificates
// need no per-address SANs.
func ServerName(r Role) string { return string(r) + ".dhvisor" }

// Files are the PEM paths a process uses; yaml tags ca, cert, key.
type Files struct {
	CA   string `yaml:"ca"`   // the cluster CA certificate(s); a bundle during CA rotation
	Cert string `yaml:"cert"` // this process's certificate, optionally followed by intermediates
	Key  string `yaml:"key"`  // its private key
}

// IsZero reports whether no file is set (TLS not configured).
func (f Files) IsZero() bool { return f == Files{} }

// Identity is who is on the other end of a connection.
type Identity struct {
	Role Role
	Name string
}

// String is "role:name", e.g. "operator:alice".
func (i Identity) String() string { return string(i.Role) + ":" + i.Name }

// IdentityOf reads the role (the single Subject OrganizationalUnit) and name
// (the CommonName) of a certificate made by CreateCert. It does not verify
// the certificate.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, fmt.Errorf("no certificate")
	}
	ou := cert.Subject.OrganizationalUnit
	if len(ou) != 1 {
		return Identity{}, fmt.Errorf("certificate %q has %d organizational units %q, want exactly one role (agent, coordinator or operator)", cert.Subject.CommonName, len(ou), ou)
	}
	r, err := ParseRole(ou[0])
	if err != nil {
		return Identity{}, fmt.Errorf("certificate %q: organizational unit: %v", cert.Subject.CommonName, err)
	}
	if cert.Subject.CommonName == "" {
		return Identity{}, fmt.Errorf("%s certificate has no common name", r)
	}
	return Identity{Role: r, Name: cert.Subject.CommonName}, nil
}

// PeerIdentity returns the verified identity of a gRPC call's peer (from
// google.golang.org/grpc/peer + credentials.TLSInfo), false if none.
//
// The peer's certificate is trusted as verified: use it on servers and
// clients whose credentials come from ServerConfig or ClientConfig, which
// reject every handshake whose peer certificate does not chain to the cluster
// CA or carry an allowed role.
func PeerIdentity(ctx context.Context) (Identity, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Identity{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || !info.State.HandshakeComplete || len(info.State.PeerCertificates) == 0 {
		return Identity{}, false
	}
	id, err := IdentityOf(info.State.PeerCertificates[0])
	if err != nil {
		return Identity{}, false
	}
	return id, true
}
