package config

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// coordBase is a valid coordinator.yaml but for envoy:, 8 lines long.
const coordBase = `node: c1
data_dir: data
api: {listen: 127.0.0.1:8125}
raft:
  listen: 127.0.0.1:8126
  bootstrap: [{id: c1, addr: "127.0.0.1:8126"}]
gossip: {bind: 127.0.0.1:7947}
tls: {ca: tls/ca.pem, cert: tls/c1.pem, key: tls/c1-key.pem}
`

func TestCoordinatorEnvoy(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"coordinator.yaml": coordBase + `envoy:
  xds:
    listen: 0.0.0.0:8127
    advertise: 10.0.0.5:8127
  extra_routes_file: routes.prop
  extra_routes:
    grafana: {host: grafana.example.com, prefix: /grafana}
    docs:
      host: docs.internal
      port: 8080
      prefix: /docs/
      prefix_rewrite: /site/
      tls: false
      exact_prefix: true
`,
		"routes.prop": "envoy.xds.extra.routes.kibana.host=kibana\nenvoy.xds.extra.routes.kibana.prefix=/kibana\n",
	})
	file := filepath.Join(dir, "coordinator.yaml")
	c, err := LoadCoordinator(file)
	if err != nil {
		t.Fatal(err)
	}
	x := c.Envoy.XDS
	if x.Listen != "0.0.0.0:8127" || x.Addr(x.Listen) != "10.0.0.5:8127" || x.Plaintext {
		t.Errorf("xds %+v", x)
	}
	if want := filepath.Join(dir, "routes.prop"); c.Envoy.ExtraRoutesFile != want {
		t.Errorf("extra_routes_file %q, want %q (relative to the config's directory)", c.Envoy.ExtraRoutesFile, want)
	}
	yamlRoutes := []ExtraRoute{
		{Name: "docs", Host: "docs.internal", Port: 8080, Prefix: "/docs/", PrefixRewrite: "/site/", ExactPrefix: true, Origin: file + ":16"},
		{Name: "grafana", Host: "grafana.example.com", Port: 443, Prefix: "/grafana", PrefixRewrite: "/", TLS: true, Origin: file + ":15"},
	}
	if !reflect.DeepEqual(c.Envoy.Routes, yamlRoutes) {
		t.Errorf("routes\n got %+v\nwant %+v", c.Envoy.Routes, yamlRoutes)
	}
	all, err := LoadExtraRoutes(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	kibana := ExtraRoute{Name: "kibana", Host: "kibana", Port: 443, Prefix: "/kibana", PrefixRewrite: "/", TLS: true, Origin: c.Envoy.ExtraRoutesFile + ":1"}
	if want := []ExtraRoute{yamlRoutes[0], yamlRoutes[1], kibana}; !reflect.DeepEqual(all, want) {
		t.Errorf("merged routes\n got %+v\nwant %+v", all, want)
	}

	// The file is read again on every call, as the coordinator does when it changes.
	if err := os.WriteFile(c.Envoy.ExtraRoutesFile, []byte("envoy.xds.extra.routes.kibana.host=kibana2\nenvoy.xds.extra.routes.kibana.prefix=/kibana\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if all, err = LoadExtraRoutes(context.Background(), c); err != nil || len(all) != 3 || all[2].Host != "kibana2" {
		t.Fatalf("after the change: %+v, %v", all, err)
	}

	// Conflicts between the two are refused naming both origins.
	if err := os.WriteFile(c.Envoy.ExtraRoutesFile, []byte("envoy.xds.extra.routes.grafana.host=g\nenvoy.xds.extra.routes.grafana.prefix=/g\nenvoy.xds.extra.routes.d.host=d\nenvoy.xds.extra.routes.d.prefix=/docs\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadExtraRoutes(context.Background(), c)
	for _, w := range []string{
		c.Envoy.ExtraRoutesFile + `:1: envoy.xds.extra.routes.grafana: route "grafana" is also defined in coordinator.yaml at ` + file + ":15",
		c.Envoy.ExtraRoutesFile + `:3: envoy.xds.extra.routes.d.prefix: "/docs" is already the prefix of route "docs" (` + file + ":16)",
	} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v\ndoes not contain %q", err, w)
		}
	}

	// The file's own problems come back as they do from ParseExtraRoutes.
	if err := os.WriteFile(c.Envoy.ExtraRoutesFile, []byte("envoy.xds.extra.routes.x.host=x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err = LoadExtraRoutes(context.Background(), c); err == nil || !strings.Contains(err.Error(), c.Envoy.ExtraRoutesFile+":1: envoy.xds.extra.routes.x.prefix: missing") {
		t.Errorf("error %v", err)
	}
	os.Remove(c.Envoy.ExtraRoutesFile)
	if _, err = LoadExtraRoutes(context.Background(), c); err == nil || !strings.Contains(err.Error(), "cannot read") {
		t.Errorf("error %v", err)
	}
}

func TestCoordinatorXDSDefaults(t *testing.T) {
	dir := writeFiles(t, map[string]string{"coordinator.yaml": coordBase + "envoy:\n  xds: {listen: 10.0.0.5:9124, plaintext: true}\n"})
	c, err := LoadCoordinator(filepath.Join(dir, "coordinator.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if x := c.Envoy.XDS; x.Addr(x.Listen) != "10.0.0.5:9124" || !x.Plaintext {
		t.Errorf("xds %+v", x)
	}
	if rs, err := LoadExtraRoutes(context.Background(), c); err != nil || len(rs) != 0 {
		t.Errorf("no routes configured: %v, %v", rs, err)
	}
}

func TestInvalidCoordinatorConfigs(t *testing.T) {
	tests := []struct {
		name  string
		envoy string // appended to coordBase, so its first line is line 9
		want  []string
	}{
		{
			// Like api and raft: the default listen is a wildcard, so a
			// replica must say which address Envoys dial.
			name:  "xds listen defaulted to a wildcard",
			envoy: "",
			want:  []string{`coordinator.yaml:1: envoy.xds.advertise: required when envoy.xds.listen ("0.0.0.0:8127") is on every address`},
		},
		{
			name:  "xds listen on a wildcard without advertise",
			envoy: "envoy:\n  xds:\n    listen: :8127\n",
			want:  []string{`coordinator.yaml:11: envoy.xds.advertise: required when envoy.xds.listen (":8127")`},
		},
		{
			name:  "xds addresses malformed",
			envoy: "envoy:\n  xds: {listen: 8127, advertise: 0.0.0.0:8127}\n",
			want:  []string{`coordinator.yaml:10: envoy.xds.listen: "8127" is not host:port`, `coordinator.yaml:10: envoy.xds.advertise: "0.0.0.0:8127": peers dial it`},
		},
		{
			name:  "unknown envoy field",
			envoy: "envoy:\n  xds: {listen: 10.0.0.5:8127, plaintxt: true}\n  extra_route_file: x\n",
			want:  []string{"coordinator.yaml:10: envoy.xds.plaintxt: unknown field (expected one of advertise, listen, plaintext, upstream, upstream_grace)", "coordinator.yaml:11: envoy.extra_route_file: unknown field"},
		},
		{
			name:  "missing extra routes file",
			envoy: "envoy:\n  xds: {listen: 10.0.0.5:8127}\n  extra_routes_file: nope.prop\n",
			want:  []string{"coordinator.yaml:11: envoy.extra_routes_file: cannot read ", "nope.prop: no such file or directory"},
		},
		// The acceptance cases in YAML: the same rules, the key named as written here.
		{
			name:  "extra route on /iris",
			envoy: "envoy:\n  xds: {listen: 10.0.0.5:8127}\n  extra_routes:\n    grafana:\n      host: grafana.example.com\n      prefix: /iris\n",
			want:  []string{`coordinator.yaml:14: envoy.extra_routes.grafana.prefix: "/iris" is reserved by Deephaven`},
		},
		{
			name:  "extra route without a host",
			envoy: "envoy:\n  xds: {listen: 10.0.0.5:8127}\n  extra_routes:\n    grafana: {prefix: /grafana}\n",
			want:  []string{`coordinator.yaml:12: envoy.extra_routes.grafana.host: missing`},
		},
		{
			name:  "extra route with a non-numeric port",
			envoy: "envoy:\n  xds: {listen: 10.0.0.5:8127}\n  extra_routes:\n    grafana:\n      host: g\n      prefix: /grafana\n      port: http\n",
			want:  []string{`coordinator.yaml:15: envoy.extra_routes.grafana.port: "http" is not a port number (expected 1-65535)`},
		},
		{
			name:  "extra route keys",
			envoy: "envoy:\n  xds: {listen: 10.0.0.5:8127}\n  extra_routes:\n    a: {host: h, prefix: /a, prefixRewrite: /x, tls: [true]}\n    b: /b\n",
			want: []string{
				"coordinator.yaml:12: envoy.extra_routes.a.prefixRewrite: unknown key (expected one of host, port, prefix, prefix_rewrite, tls, exact_prefix); did you mean prefix_rewrite?",
				"coordinator.yaml:12: envoy.extra_routes.a.tls: expected a single value",
				"coordinator.yaml:13: envoy.extra_routes.b: expected a mapping of the route's keys",
			},
		},
		{
			name:  "extra routes sharing a prefix",
			envoy: "envoy:\n  xds: {listen: 10.0.0.5:8127}\n  extra_routes:\n    a: {host: h, prefix: /a/}\n    b: {host: h, prefix: /a}\n",
			want:  []string{`coordinator.yaml:13: envoy.extra_routes.b.prefix: "/a" is already the prefix of route "a" (`},
		},
		{
			name:  "extra routes not a mapping",
			envoy: "envoy:\n  xds: {listen: 10.0.0.5:8127}\n  extra_routes: [a, b]\n",
			want:  []string{`coordinator.yaml:11: envoy.extra_routes: expected a mapping of route names to their keys`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"coordinator.yaml": coordBase + tt.envoy})
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
