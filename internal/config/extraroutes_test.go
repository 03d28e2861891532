package config

import (
	"errors"
	"io/fs"
	"reflect"
	"strings"
	"testing"

	"github.com/dhvisor/dhvisor/internal/properties"
)

// memFiles opens included files from a map.
func memFiles(m map[string]string) properties.Opener {
	return func(name string) ([]byte, string, error) {
		s, ok := m[name]
		if !ok {
			return nil, "", &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		return []byte(s), name, nil
	}
}

func TestParseExtraRoutes(t *testing.T) {
	const (
		dir  = "/etc/sysconfig/illumon.d/resources/"
		file = dir + "iris-environment.prop"
	)
	tests := []struct {
		name  string
		in    string
		files map[string]string // what includefiles reads
		hosts []string          // the coordinator's host names; infra1 when nil
		want  []ExtraRoute      // when the file is valid
		// wantErr: every string must appear in the error, each on its own
		// line, from its start: "file:line: key: message..."
		wantErr []string
	}{
		{
			name: "defaults",
			in: `# Deephaven's documented defaults
envoy.xds.extra.routes.grafana.host=grafana.example.com
envoy.xds.extra.routes.grafana.prefix=/grafana
`,
			want: []ExtraRoute{{Name: "grafana", Host: "grafana.example.com", Port: 443, Prefix: "/grafana", PrefixRewrite: "/", TLS: true, Origin: file + ":2"}},
		},
		{
			name: "plain port default and every key set",
			in: `envoy.xds.extra.routes.metrics.prefix = /metrics/
envoy.xds.extra.routes.metrics.host: prometheus
envoy.xds.extra.routes.metrics.tls=false
envoy.xds.extra.routes.docs.host=docs.internal
envoy.xds.extra.routes.docs.port=8443
envoy.xds.extra.routes.docs.prefix=/docs
envoy.xds.extra.routes.docs.prefixRewrite=/site/docs/
envoy.xds.extra.routes.docs.tls=TRUE
envoy.xds.extra.routes.docs.exactPrefix=true
`,
			want: []ExtraRoute{
				{Name: "docs", Host: "docs.internal", Port: 8443, Prefix: "/docs", PrefixRewrite: "/site/docs/", TLS: true, ExactPrefix: true, Origin: file + ":4"},
				{Name: "metrics", Host: "prometheus", Port: 80, Prefix: "/metrics/", PrefixRewrite: "/", Origin: file + ":1"},
			},
		},
		{
			name: "other properties, includes, comments, continuations, escapes and the latest definition",
			files: map[string]string{
				dir + "iris-defaults.prop":  "envoy.xds.extra.routes.grafana.port=80\nenvoy.xds.extra.routes.grafana.tls=false\n",
				dir + "iris-endpoints.prop": "RemoteQueryDispatcher.host=query1\n",
			},
			in: `includefiles=iris-defaults.prop,iris-endpoints.prop
! a comment continues \
envoy.xds.extra.routes.later.host=swallowed by the comment
RemoteQueryDispatcher.webserver.enabled=true
envoy.xds.extra.routes.grafana.host=\
    grafana.\
    example.com
envoy.xds.extra.routes.grafana.prefix=/graf\u0061na
envoy.xds.extra.routes.grafana.port=3000
envoy.xds.extra.routes.grafana.port=3001
envoy.xds.extra.routes.later.prefix=/later
envoy.xds.extra.routes.later.host=later.example.com
`,
			want: []ExtraRoute{
				// Its first key still in force is the included file's tls=false.
				{Name: "grafana", Host: "grafana.example.com", Port: 3001, Prefix: "/grafana", PrefixRewrite: "/", Origin: dir + "iris-defaults.prop:2"},
				{Name: "later", Host: "later.example.com", Port: 443, Prefix: "/later", PrefixRewrite: "/", TLS: true, Origin: file + ":11"},
			},
		},
		{
			name: "scopes are evaluated as the configuration server on this host",
			in: `[service.name=configuration_server] {
    envoy.xds.extra.routes.grafana.host=grafana.example.com
    [host=infra1|infra2] {
        envoy.xds.extra.routes.grafana.prefix=/grafana
    }
}
[service.name=iris_controller]
{
envoy.xds.extra.routes.kibana.host=kibana
envoy.xds.extra.routes.kibana.prefix=/kibana
}
`,
			// kibana is the controller's: the configuration server, which
			// builds Envoy's routes, never sees it.
			want: []ExtraRoute{
				{Name: "grafana", Host: "grafana.example.com", Port: 443, Prefix: "/grafana", PrefixRewrite: "/", TLS: true, Origin: file + ":2"},
			},
		},
		{
			name: "a scope for other hosts",
			in: `[service.name=configuration_server] {
    envoy.xds.extra.routes.grafana.host=grafana.example.com
    [host=infra1|infra2] {
        envoy.xds.extra.routes.grafana.prefix=/grafana
    }
}
`,
			hosts:   []string{"infra3.example.com", "infra3", "10.0.0.3"},
			wantErr: []string{file + `:2: envoy.xds.extra.routes.grafana.prefix: missing`},
		},
		{
			name: "exact for exactPrefix, the later holds",
			in: `envoy.xds.extra.routes.a.host=h
envoy.xds.extra.routes.a.prefix=/a
envoy.xds.extra.routes.a.exactPrefix=false
envoy.xds.extra.routes.a.exact=true
`,
			want: []ExtraRoute{{Name: "a", Host: "h", Port: 443, Prefix: "/a", PrefixRewrite: "/", TLS: true, ExactPrefix: true, Origin: file + ":1"}},
		},
		// The old reader split at a blank, as java.util.Properties does;
		// Deephaven splits only at = or :.
		{
			name:    "a blank does not separate a key from its value",
			in:      "envoy.xds.extra.routes.a.host=h\nenvoy.xds.extra.routes.a.prefix=/a\nenvoy.xds.extra.routes.a.tls false\n",
			wantErr: []string{file + `:3: envoy.xds.extra.routes.a.tls false: unknown key`},
		},
		// The old reader crashed on this (dhctl validate, and a coordinator
		// reading the file, crash-looping).
		{
			name:    "a line holding only a backslash at the end",
			in:      "envoy.xds.extra.routes.a.host=h\n\\",
			wantErr: []string{file + `:2:1: the line ends in a continuation \ but the file ends here`},
		},
		{
			name:    "a final key assigned again",
			in:      "final envoy.xds.extra.routes.a.host=h\nenvoy.xds.extra.routes.a.prefix=/a\nenvoy.xds.extra.routes.a.host=i\n",
			wantErr: []string{file + `:3:1: "envoy.xds.extra.routes.a.host" is final (made final at ` + file + `:1:7)`},
		},
		{
			name:    "a missing included file",
			in:      "includefiles=nope.prop\n",
			wantErr: []string{file + `:1:1: cannot read included file: open ` + dir + `nope.prop: file does not exist`},
		},
		{
			name:  "no routes",
			in:    "includefiles=iris-defaults.prop\nfoo=bar\n",
			files: map[string]string{dir + "iris-defaults.prop": "bar=baz\n"},
			want:  nil,
		},
		// The acceptance cases: the key named, at the right line.
		{
			name: "prefix /iris",
			in: `envoy.xds.extra.routes.grafana.host=grafana.example.com
envoy.xds.extra.routes.grafana.prefix=/iris
`,
			wantErr: []string{file + `:2: envoy.xds.extra.routes.grafana.prefix: "/iris" is reserved by Deephaven`},
		},
		{
			name: "missing host",
			in: `# no host
envoy.xds.extra.routes.grafana.prefix=/grafana
envoy.xds.extra.routes.grafana.port=3000
`,
			wantErr: []string{file + `:2: envoy.xds.extra.routes.grafana.host: missing`},
		},
		{
			name: "non-numeric port",
			in: `envoy.xds.extra.routes.grafana.host=grafana.example.com
envoy.xds.extra.routes.grafana.prefix=/grafana
envoy.xds.extra.routes.grafana.port=http
`,
			wantErr: []string{file + `:3: envoy.xds.extra.routes.grafana.port: "http" is not a port number (expected 1-65535)`},
		},
		{
			name:    "port out of range",
			in:      "envoy.xds.extra.routes.a.host=h\nenvoy.xds.extra.routes.a.prefix=/a\nenvoy.xds.extra.routes.a.port=70000\n",
			wantErr: []string{file + `:3: envoy.xds.extra.routes.a.port: "70000" is not a port number`},
		},
		{
			name: "reserved prefixes",
			in: `envoy.xds.extra.routes.a.host=h
envoy.xds.extra.routes.a.prefix=/
envoy.xds.extra.routes.b.host=h
envoy.xds.extra.routes.b.prefix=/worker/
envoy.xds.extra.routes.c.host=h
envoy.xds.extra.routes.c.prefix=/worker/w1
envoy.xds.extra.routes.d.host=h
envoy.xds.extra.routes.d.prefix=/cus
envoy.xds.extra.routes.e.host=h
envoy.xds.extra.routes.e.prefix=/comm/
envoy.xds.extra.routes.f.host=h
envoy.xds.extra.routes.f.prefix=/iris/x
envoy.xds.extra.routes.g.host=h
envoy.xds.extra.routes.g.prefix=/iriside
envoy.xds.extra.routes.h.host=h
envoy.xds.extra.routes.h.prefix=/acl/
envoy.xds.extra.routes.i.host=h
envoy.xds.extra.routes.i.prefix=/io.deephaven.proto.auth.grpc.AuthApi/
`,
			wantErr: []string{
				file + `:2: envoy.xds.extra.routes.a.prefix: "/" is reserved by Deephaven (reserved: /, /worker, /cus, /comm, /iris and anything under /worker/ and /iris/)`,
				file + `:4: envoy.xds.extra.routes.b.prefix: "/worker/" is reserved by Deephaven`,
				file + `:6: envoy.xds.extra.routes.c.prefix: "/worker/w1" is under /worker/, which is reserved by Deephaven`,
				file + `:8: envoy.xds.extra.routes.d.prefix: "/cus" is reserved`,
				file + `:10: envoy.xds.extra.routes.e.prefix: "/comm/" is reserved`,
				file + `:12: envoy.xds.extra.routes.f.prefix: "/iris/x" is under /iris/`,
				file + `:14: envoy.xds.extra.routes.g.prefix: "/iriside" is taken by dhvisor's built-in route to web_api_service`,
				file + `:16: envoy.xds.extra.routes.h.prefix: "/acl/" is taken by dhvisor's built-in route to the ACL write server`,
				file + `:18: envoy.xds.extra.routes.i.prefix: "/io.deephaven.proto.auth.grpc.AuthApi/" is taken by dhvisor's built-in route`,
			},
		},
		{
			name: "prefix without slash, missing prefix, bad rewrite",
			in: `envoy.xds.extra.routes.a.host=h
envoy.xds.extra.routes.a.prefix=grafana
envoy.xds.extra.routes.b.host=h
envoy.xds.extra.routes.c.host=h
envoy.xds.extra.routes.c.prefix=/c
envoy.xds.extra.routes.c.prefixRewrite=c
`,
			wantErr: []string{
				file + `:2: envoy.xds.extra.routes.a.prefix: "grafana" must start with /`,
				file + `:3: envoy.xds.extra.routes.b.prefix: missing`,
				file + `:6: envoy.xds.extra.routes.c.prefixRewrite: "c" must start with /`,
			},
		},
		{
			name: "booleans",
			in:   "envoy.xds.extra.routes.a.host=h\nenvoy.xds.extra.routes.a.prefix=/a\nenvoy.xds.extra.routes.a.tls=yes\nenvoy.xds.extra.routes.a.exactPrefix=1\n",
			wantErr: []string{
				file + `:3: envoy.xds.extra.routes.a.tls: "yes" is not true or false`,
				file + `:4: envoy.xds.extra.routes.a.exactPrefix: "1" is not true or false`,
			},
		},
		{
			name: "unknown sub-keys",
			in:   "envoy.xds.extra.routes.a.hots=h\nenvoy.xds.extra.routes.a.host=h\nenvoy.xds.extra.routes.a.prefix=/a\nenvoy.xds.extra.routes.a.prefixrewrite=/\nenvoy.xds.extra.routes.grafana=x\n",
			wantErr: []string{
				file + `:1: envoy.xds.extra.routes.a.hots: unknown key (expected one of host, port, prefix, prefixRewrite, tls, exactPrefix)`,
				file + `:4: envoy.xds.extra.routes.a.prefixrewrite: unknown key (expected one of host, port, prefix, prefixRewrite, tls, exactPrefix); did you mean prefixRewrite?`,
				file + `:5: envoy.xds.extra.routes.grafana: expected envoy.xds.extra.routes.<name>.<key>`,
			},
		},
		{
			name: "duplicate prefixes, with and without the trailing slash",
			in: `envoy.xds.extra.routes.a.host=h
envoy.xds.extra.routes.a.prefix=/grafana
envoy.xds.extra.routes.b.host=h
envoy.xds.extra.routes.b.prefix=/grafana/
`,
			wantErr: []string{file + `:4: envoy.xds.extra.routes.b.prefix: "/grafana/" is already the prefix of route "a" (` + file + `:1)`},
		},
		{
			name: "name unusable in a cluster name",
			in:   "envoy.xds.extra.routes.my route.host=h\nenvoy.xds.extra.routes.my route.prefix=/m\n",
			// A blank does not end a key: the name is "my route".
			wantErr: []string{file + `:1: envoy.xds.extra.routes.my route: route name "my route" cannot be used in an Envoy cluster name`},
		},
		{
			name:    "name with a character Envoy refuses",
			in:      "envoy.xds.extra.routes.my\\ route.host=h\nenvoy.xds.extra.routes.my\\ route.prefix=/m\nenvoy.xds.extra.routes.ok-1.2_x.host=h\nenvoy.xds.extra.routes.ok-1.2_x.prefix=/ok\n",
			wantErr: []string{file + `:1: envoy.xds.extra.routes.my route: route name "my route" cannot be used in an Envoy cluster name`},
		},
		{
			name:    "a URL for a host",
			in:      "envoy.xds.extra.routes.a.host=https://grafana:3000/\nenvoy.xds.extra.routes.a.prefix=/a\nenvoy.xds.extra.routes.b.host=grafana:3000\nenvoy.xds.extra.routes.b.prefix=/b\n",
			wantErr: []string{file + `:1: envoy.xds.extra.routes.a.host: "https://grafana:3000/" is not a host name`, file + `:3: envoy.xds.extra.routes.b.host: "grafana:3000" is not a host name`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hosts := tt.hosts
			if hosts == nil {
				hosts = []string{"infra1.example.com", "infra1", "10.0.0.1"}
			}
			got, err := ParseExtraRoutes(file, []byte(tt.in), memFiles(tt.files), ExtraRoutesScope(hosts))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("error:\n%v", err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("routes\n got %+v\nwant %+v", got, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("parsed %+v; want an error", got)
			}
			var es Errors
			var ps properties.Errors
			if !errors.As(err, &es) && !errors.As(err, &ps) {
				t.Errorf("error is a %T, want config.Errors or properties.Errors", err)
			}
			lines := strings.Split(err.Error(), "\n")
			for _, w := range tt.wantErr {
				found := false
				for _, l := range lines {
					found = found || strings.HasPrefix(l, w)
				}
				if !found {
					t.Errorf("error\n%s\nhas no line starting %q", err, w)
				}
			}
		})
	}
}

// An extra route ignored here would be silently missing from Envoy, so
// the valid ones of an invalid file are not returned either.
func TestParseExtraRoutesRefusesWholeFile(t *testing.T) {
	routes, err := ParseExtraRoutes("x.prop", []byte("envoy.xds.extra.routes.a.host=h\nenvoy.xds.extra.routes.a.prefix=/a\nenvoy.xds.extra.routes.b.host=h\n"), nil, ExtraRoutesScope(nil))
	if err == nil || routes != nil {
		t.Fatalf("routes %v, err %v; want nil and an error", routes, err)
	}
}
