package config

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestServiceEnvoyUpstream(t *testing.T) {
	dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [single-node]\n" + standinDefaults + `services:
  web_api_service: {envoy: {tls: false}}
  db_query_server:
    ports: {websocket: 23052}
`})
	n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]EnvoyUpstream{
		"configuration_server":  {Port: "websocket", TLS: true, HTTP2: true},
		"authentication_server": {Port: "websocket", TLS: true, HTTP2: true, Routes: []string{"/io.deephaven.proto.auth.grpc.AuthApi/"}},
		"db_acl_write_server":   {Port: "websocket", TLS: true, HTTP2: true, Routes: []string{"/acl/"}},
		"iris_controller":       {Port: "websocket", TLS: true, HTTP2: true, Routes: []string{"/io.deephaven.proto.controller.grpc.ControllerApi/"}},
		"db_query_server":       {Port: "websocket", TLS: true, HTTP2: true},
		"db_merge_server":       {Port: "websocket", TLS: true, HTTP2: true},
		// The override changes tls only.
		"web_api_service": {Port: "web", TLS: false, HTTP2: false, Routes: []string{"/iriside", "/iris/"}, Default: true},
	}
	for _, name := range n.ServiceNames() {
		s := n.Services[name]
		w, routed := want[name]
		switch {
		case !routed && s.Envoy != nil:
			t.Errorf("%s: envoy %+v, want none", name, *s.Envoy)
		case routed && (s.Envoy == nil || !reflect.DeepEqual(*s.Envoy, w)):
			t.Errorf("%s: envoy %+v, want %+v", name, s.Envoy, w)
		}
	}
	if p := n.Services["db_query_server"]; p.Ports[p.Envoy.Port] != 23052 {
		t.Errorf("db_query_server's envoy port resolves to %d", p.Ports[p.Envoy.Port])
	}

	// client_update_service is not in single-node; added, it is routed over TLS.
	dir = writeFiles(t, map[string]string{"agent.yaml": "roles: [infra]\n" + standinDefaults + "services:\n  client_update_service: {}\n"})
	if n, err = LoadAgent(filepath.Join(dir, "agent.yaml")); err != nil {
		t.Fatal(err)
	}
	if e := n.Services["client_update_service"].Envoy; e == nil || !reflect.DeepEqual(*e, EnvoyUpstream{Port: "https", TLS: true}) {
		t.Errorf("client_update_service envoy %+v", e)
	}
}

func TestServiceEnvoyUpstreamInvalid(t *testing.T) {
	for _, tt := range []struct{ name, services, want string }{
		{"unknown port name", "  web_api_service: {envoy: {port: webx}}\n", `agent.yaml:7: services.web_api_service.envoy.port: "webx" is not a port name of this service ([web])`},
		{"no port", "  mine: {command: [x], ports: {a: 1234}, envoy: {tls: true}}\n", `agent.yaml:7: services.mine.envoy.port: missing: the name of the port Envoy reaches the service on (ports: [a])`},
		{"unknown field", "  web_api_service: {envoy: {http: true}}\n", `agent.yaml:7: services.web_api_service.envoy.http: unknown field (expected one of default, http2, port, routes, tls)`},
		{"catch-all route", "  web_api_service: {envoy: {routes: [/]}}\n", `agent.yaml:7: services.web_api_service.envoy.routes.0: "/" would take every request: set envoy.default: true instead`},
		{"not a path", "  web_api_service: {envoy: {routes: [/iris/, iris]}}\n", `agent.yaml:7: services.web_api_service.envoy.routes.1: "iris" is not a path prefix (expected /something, no spaces, ? or #)`},
		{"a worker's path", "  web_api_service: {envoy: {routes: [/worker/x/]}}\n", `services.web_api_service.envoy.routes.0: "/worker/x/": /worker/ is the query workers'`},
		{"twice", "  web_api_service: {envoy: {routes: [/a/, /a/]}}\n", `services.web_api_service.envoy.routes.1: "/a/" is listed twice`},
		{"two services, one prefix", "  db_acl_write_server: {envoy: {routes: [/iris/]}}\n", `agent.yaml:7: services.db_acl_write_server.envoy.routes: "/iris/" is also routed to web_api_service; a prefix goes to one service`},
		{"two defaults", "  iris_controller: {envoy: {default: true}}\n", `agent.yaml:7: services.iris_controller.envoy.default: web_api_service takes Envoy's default route too; one service may`},
		{"not a boolean", "  web_api_service: {envoy: {tls: maybe}}\n", `agent.yaml:7: services.web_api_service: "maybe" is a str, expected true or false`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [single-node]\n" + standinDefaults + "services:\n" + tt.services})
			_, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestServiceRuntime(t *testing.T) {
	dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [single-node]\n" + standinDefaults + `  runtime: systemd
services:
  tailer1: {runtime: exec}
  web_api_service: {output: journal}
`})
	n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][2]string{
		"configuration_server": {RuntimeSystemd, OutputFile},
		"tailer1":              {RuntimeExec, OutputFile},
		"web_api_service":      {RuntimeSystemd, OutputJournal},
	} {
		if s := n.Services[name]; s.Runtime != want[0] || s.Output != want[1] {
			t.Errorf("%s: runtime %s output %s, want %v", name, s.Runtime, s.Output, want)
		}
	}
}

func TestServiceRuntimeInvalid(t *testing.T) {
	for _, tt := range []struct{ name, services, want string }{
		{"unknown runtime", "  tailer1: {runtime: podman}\n", `agent.yaml:7: services.tailer1.runtime: runtime "podman" is not supported (expected exec or systemd)`},
		{"unknown output", "  tailer1: {output: syslog}\n", `agent.yaml:7: services.tailer1.output: output "syslog" is not supported (expected file or journal)`},
		{"journal without systemd", "  tailer1: {output: journal}\n", `agent.yaml:7: services.tailer1.output: output journal needs runtime systemd (this service's runtime is exec)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [single-node]\n" + standinDefaults + "services:\n" + tt.services})
			_, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}
