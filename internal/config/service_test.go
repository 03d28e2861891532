package config

import (
	"path/filepath"
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
		"authentication_server": {Port: "websocket", TLS: true, HTTP2: true},
		"db_acl_write_server":   {Port: "websocket", TLS: true, HTTP2: true},
		"iris_controller":       {Port: "websocket", TLS: true, HTTP2: true},
		"db_query_server":       {Port: "websocket", TLS: true, HTTP2: true},
		"db_merge_server":       {Port: "websocket", TLS: true, HTTP2: true},
		// The override changes tls only.
		"web_api_service": {Port: "web", TLS: false, HTTP2: false},
	}
	for _, name := range n.ServiceNames() {
		s := n.Services[name]
		w, routed := want[name]
		switch {
		case !routed && s.Envoy != nil:
			t.Errorf("%s: envoy %+v, want none", name, *s.Envoy)
		case routed && (s.Envoy == nil || *s.Envoy != w):
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
	if e := n.Services["client_update_service"].Envoy; e == nil || *e != (EnvoyUpstream{Port: "https", TLS: true}) {
		t.Errorf("client_update_service envoy %+v", e)
	}
}

func TestServiceEnvoyUpstreamInvalid(t *testing.T) {
	for _, tt := range []struct{ name, services, want string }{
		{"unknown port name", "  web_api_service: {envoy: {port: webx}}\n", `agent.yaml:7: services.web_api_service.envoy.port: "webx" is not a port name of this service ([web])`},
		{"no port", "  mine: {command: [x], ports: {a: 1234}, envoy: {tls: true}}\n", `agent.yaml:7: services.mine.envoy.port: missing: the name of the port Envoy reaches the service on (ports: [a])`},
		{"unknown field", "  web_api_service: {envoy: {http: true}}\n", `agent.yaml:7: services.web_api_service.envoy.http: unknown field (expected one of http2, port, tls)`},
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
