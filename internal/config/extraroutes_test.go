package config

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseExtraRoutes(t *testing.T) {
	const file = "/etc/sysconfig/illumon.d/resources/iris-environment.prop"
	tests := []struct {
		name string
		in   string
		want []ExtraRoute // when the file is valid
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
envoy.xds.extra.routes.metrics.tls false
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
			name: "other properties, comments, continuations, escapes and the latest definition",
			in: `includefiles=iris-defaults.prop,iris-endpoints.prop
! a comment does not continue \
envoy.xds.extra.routes.later.host=overridden below
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
				{Name: "grafana", Host: "grafana.example.com", Port: 3001, Prefix: "/grafana", PrefixRewrite: "/", TLS: true, Origin: file + ":5"},
				{Name: "later", Host: "later.example.com", Port: 443, Prefix: "/later", PrefixRewrite: "/", TLS: true, Origin: file + ":3"},
			},
		},
		{
			name: "scope blocks are skipped, their keys count",
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
			want: []ExtraRoute{
				{Name: "grafana", Host: "grafana.example.com", Port: 443, Prefix: "/grafana", PrefixRewrite: "/", TLS: true, Origin: file + ":2"},
				{Name: "kibana", Host: "kibana", Port: 443, Prefix: "/kibana", PrefixRewrite: "/", TLS: true, Origin: file + ":9"},
			},
		},
		{
			name: "no routes",
			in:   "includefiles=iris-defaults.prop\nfoo=bar\n",
			want: nil,
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
			// "my route.host" is split at the blank by the properties syntax.
			wantErr: []string{file + `:1: envoy.xds.extra.routes.my: expected envoy.xds.extra.routes.<name>.<key>`},
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
			got, err := ParseExtraRoutes(file, []byte(tt.in))
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
			if _, ok := err.(Errors); !ok {
				t.Errorf("error is a %T, want config.Errors", err)
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
	routes, err := ParseExtraRoutes("x.prop", []byte("envoy.xds.extra.routes.a.host=h\nenvoy.xds.extra.routes.a.prefix=/a\nenvoy.xds.extra.routes.b.host=h\n"))
	if err == nil || routes != nil {
		t.Fatalf("routes %v, err %v; want nil and an error", routes, err)
	}
}

func TestForEachProperty(t *testing.T) {
	type kv struct {
		line       int
		key, value string
	}
	var got []kv
	forEachProperty([]byte("a=1\r\n  b : 2 \n c\\ d  e\\\\\nf\\:g=h\\\n  i\\\n\n# x\n}\n[a=b] {\nj\nk=\\u00e9\\\n"), func(line int, key, value string) {
		got = append(got, kv{line, key, value})
	})
	want := []kv{{1, "a", "1"}, {2, "b", "2 "}, {3, "c d", `e\`}, {4, "f:g", "hi"}, {10, "j", ""}, {11, "k", "é"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}
