package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// DefaultUpstreamGrace is how long the workers imported from the
// configuration server stay routed while its xDS stream is down.
const DefaultUpstreamGrace = 10 * time.Minute

// XDSUpstream is Deephaven's configuration server xDS (CDS and RDS on its
// envoy.xds.port, 8124 by default), from which the leading coordinator
// imports the query workers: the routes Deephaven makes on the
// envoy-prefix header, with their clusters' endpoints.
type XDSUpstream struct {
	// Address is the configuration server's xDS host:port.
	Address string `yaml:"address"`
	// TLS: how to reach it over TLS. Plaintext must be said instead.
	TLS *UpstreamTLS `yaml:"tls"`
	// Plaintext speaks xDS without TLS, as Envoy on a bootstrap whose
	// xds_service cluster has no transport socket does.
	Plaintext bool `yaml:"plaintext"`
	// ADS subscribes over one aggregated stream; false (the default) opens
	// a CDS and an RDS stream, as Envoy on Deephaven's bootstrap does.
	ADS bool `yaml:"ads"`
	// RouteConfig is the route configuration asked of RDS; default
	// rds_config, the name in Deephaven's bootstrap.
	RouteConfig string `yaml:"route_config"`
	// NodeID and NodeCluster are the Envoy node identity presented;
	// default dhcoord-<node> and deephaven.
	NodeID      string `yaml:"node_id"`
	NodeCluster string `yaml:"node_cluster"`
}

// UpstreamTLS are the files that reach the configuration server over TLS:
// PEM, relative to coordinator.yaml's directory.
type UpstreamTLS struct {
	// CA holds the certificates the server's chain must end in (Deephaven's
	// own CA); empty: the system's roots.
	CA string `yaml:"ca"`
	// Cert and Key: a client certificate, when the server asks for one.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// ServerName is the name the server's certificate must carry; default
	// the address's host.
	ServerName string `yaml:"server_name"`
}

// ClientConfig is the TLS configuration for dialing address, read from the
// files now.
func (t *UpstreamTLS) ClientConfig(address string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if tc.ServerName == "" {
		tc.ServerName, _, _ = net.SplitHostPort(address)
	}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca: %s holds no PEM certificate", t.CA)
		}
	}
	if t.Cert != "" || t.Key != "" {
		if t.Cert == "" || t.Key == "" {
			return nil, errors.New("cert and key: give both (a client certificate and its key) or neither")
		}
		pair, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("cert and key: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

func (c *Coordinator) applyUpstreamDefaults(dir string) {
	x := &c.Envoy.XDS
	if x.UpstreamGrace == 0 {
		x.UpstreamGrace = Duration(DefaultUpstreamGrace)
	}
	u := x.Upstream
	if u == nil {
		return
	}
	if u.RouteConfig == "" {
		u.RouteConfig = "rds_config"
	}
	if u.NodeID == "" {
		u.NodeID = "dhcoord-" + c.Node
	}
	if u.NodeCluster == "" {
		u.NodeCluster = "deephaven"
	}
	if u.TLS != nil {
		for _, p := range []*string{&u.TLS.CA, &u.TLS.Cert, &u.TLS.Key} {
			if *p != "" && !filepath.IsAbs(*p) {
				*p = filepath.Join(dir, *p)
			}
		}
	}
}

// validateUpstream checks envoy.xds.upstream and upstream_grace.
func (c *Coordinator) validateUpstream(es *Errors, src *source, org origins) {
	at := func(path ...string) int {
		_, l := locate(org, src.root, src.file, append([]string{"envoy", "xds"}, path...)...)
		return l
	}
	const example = "infra-1.example.com:8124"
	if g := c.Envoy.XDS.UpstreamGrace.D(); g < time.Second {
		es.add(src.file, at("upstream_grace"), "envoy.xds.upstream_grace", "%v is too short: the imported workers would go at the first reconnect (at least 1s; default %v)", g, DefaultUpstreamGrace)
	}
	u := c.Envoy.XDS.Upstream
	if u == nil {
		return
	}
	switch {
	case u.Address == "":
		es.add(src.file, at("upstream"), "envoy.xds.upstream.address", "missing: the configuration server's xDS host:port (envoy.xds.port, e.g. %s)", example)
	case notDialable(u.Address, example) != "":
		es.add(src.file, at("upstream", "address"), "envoy.xds.upstream.address", "%s", notDialable(u.Address, example))
	case u.Address == c.Envoy.XDS.Listen || u.Address == c.Envoy.XDS.Advertise:
		es.add(src.file, at("upstream", "address"), "envoy.xds.upstream.address", "%q is this coordinator's own xDS: the workers would be imported from itself", u.Address)
	}
	switch {
	case u.TLS == nil && !u.Plaintext:
		es.add(src.file, at("upstream"), "envoy.xds.upstream.tls", "missing: give tls {ca, cert, key, server_name} for a configuration server that serves xDS over TLS, or plaintext: true")
	case u.TLS != nil && u.Plaintext:
		es.add(src.file, at("upstream", "plaintext"), "envoy.xds.upstream.plaintext", "true with a tls section: say one of them")
	case u.TLS != nil:
		if _, err := u.TLS.ClientConfig(u.Address); err != nil {
			es.add(src.file, at("upstream", "tls"), "envoy.xds.upstream.tls", "%v", err)
		}
	}
}
