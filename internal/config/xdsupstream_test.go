package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
)

func TestXDSUpstreamDefaults(t *testing.T) {
	dir := t.TempDir()
	ca, _, err := tlsutil.CreateCA(dir, "deephaven CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"none.yaml": coordBase + "envoy:\n  xds: {listen: 10.0.0.5:8127}\n",
		"tls.yaml":  coordBase + "envoy:\n  xds:\n    listen: 10.0.0.5:8127\n    upstream: {address: infra-1:8124, tls: {ca: " + filepath.Base(ca) + "}}\n",
		"plain.yaml": coordBase + "envoy:\n  xds:\n    listen: 10.0.0.5:8127\n    upstream_grace: 30s\n" +
			"    upstream: {address: 10.0.0.5:8124, plaintext: true, ads: true, route_config: rc, node_id: n, node_cluster: c}\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	load := func(name string) *Coordinator {
		c, err := LoadCoordinator(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return c
	}
	if x := load("none.yaml").Envoy.XDS; x.Upstream != nil || x.UpstreamGrace.D() != DefaultUpstreamGrace {
		t.Errorf("no upstream: %+v, grace %v", x.Upstream, x.UpstreamGrace.D())
	}
	u := load("tls.yaml").Envoy.XDS.Upstream
	want := XDSUpstream{Address: "infra-1:8124", TLS: &UpstreamTLS{CA: ca}, RouteConfig: "rds_config", NodeID: "dhcoord-c1", NodeCluster: "deephaven"}
	if u == nil || u.TLS == nil || *u.TLS != *want.TLS || u.Address != want.Address || u.RouteConfig != want.RouteConfig || u.NodeID != want.NodeID || u.NodeCluster != want.NodeCluster || u.ADS {
		t.Errorf("tls upstream: %+v %+v, want %+v %+v", u, u.TLS, want, want.TLS)
	}
	tc, err := u.TLS.ClientConfig(u.Address)
	if err != nil || tc.ServerName != "infra-1" || tc.RootCAs == nil {
		t.Errorf("client config: %v, %+v", err, tc)
	}
	c := load("plain.yaml")
	if u := c.Envoy.XDS.Upstream; !u.Plaintext || !u.ADS || u.RouteConfig != "rc" || u.NodeID != "n" || u.NodeCluster != "c" || c.Envoy.XDS.UpstreamGrace.D() != 30*time.Second {
		t.Errorf("plaintext upstream: %+v, grace %v", u, c.Envoy.XDS.UpstreamGrace.D())
	}
}

func TestInvalidXDSUpstream(t *testing.T) {
	tests := []struct {
		name string
		xds  string // below envoy.xds:, from line 12
		want []string
	}{
		{"no address", "    upstream: {plaintext: true}\n",
			[]string{"coordinator.yaml:12: envoy.xds.upstream.address: missing: the configuration server's xDS host:port"}},
		{"address without a port", "    upstream:\n      address: infra-1\n      plaintext: true\n",
			[]string{`coordinator.yaml:13: envoy.xds.upstream.address: "infra-1" is not host:port`}},
		{"own xDS", "    upstream: {address: 10.0.0.5:8127, plaintext: true}\n",
			[]string{`coordinator.yaml:12: envoy.xds.upstream.address: "10.0.0.5:8127" is this coordinator's own xDS`}},
		{"neither tls nor plaintext", "    upstream:\n      address: infra-1:8124\n",
			[]string{"coordinator.yaml:12: envoy.xds.upstream.tls: missing: give tls"}},
		{"both tls and plaintext", "    upstream:\n      address: infra-1:8124\n      tls: {}\n      plaintext: true\n",
			[]string{"coordinator.yaml:15: envoy.xds.upstream.plaintext: true with a tls section"}},
		{"unreadable CA", "    upstream:\n      address: infra-1:8124\n      tls:\n        ca: nope.pem\n",
			[]string{"coordinator.yaml:14: envoy.xds.upstream.tls: ca: open ", "nope.pem: no such file or directory"}},
		{"cert without key", "    upstream:\n      address: infra-1:8124\n      tls: {cert: c.pem}\n",
			[]string{"coordinator.yaml:14: envoy.xds.upstream.tls: cert and key: give both"}},
		{"grace too short", "    upstream_grace: 10ms\n",
			[]string{"coordinator.yaml:12: envoy.xds.upstream_grace: 10ms is too short"}},
		{"grace not a duration", "    upstream_grace: soon\n",
			[]string{`coordinator.yaml:12: "soon" is not a duration`}},
		{"unknown field", "    upstream: {address: infra-1:8124, plaintext: true, adss: true}\n",
			[]string{"coordinator.yaml:12: envoy.xds.upstream.adss: unknown field (expected one of address, ads, node_cluster, node_id, plaintext, route_config, tls)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"coordinator.yaml": coordBase + "envoy:\n  xds:\n    listen: 10.0.0.5:8127\n" + tt.xds})
			_, err := LoadCoordinator(filepath.Join(dir, "coordinator.yaml"))
			if err == nil {
				t.Fatalf("loaded; want error containing %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}
