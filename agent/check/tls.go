package check

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// tlsConfig builds the client TLS configuration shared by the HTTP and gRPC
// probes. A CA file replaces the system roots rather than adding to them: a
// service with its own CA should not also be trusted via a public one.
func tlsConfig(insecureSkipVerify bool, caFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{
		InsecureSkipVerify: insecureSkipVerify,
		ServerName:         serverName,
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: %w", caFile, errNoCerts)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

var errNoCerts = errors.New("no PEM certificates found")
