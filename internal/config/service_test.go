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

func TestServiceLogCheck(t *testing.T) {
	dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [single-node]\n" + standinDefaults + `services:
  tailer1:
    checks:
      - {type: log, path: "{{.LogDir}}/LogtailerMain.log.current", pattern: "{{.Name}} RUNNING$", fatal_pattern: '\] FATAL '}
`})
	n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	c := n.Services["tailer1"].Checks[0]
	want := Check{Name: "log:LogtailerMain.log.current", Type: CheckLog, Path: "/var/log/deephaven/tailer/LogtailerMain.log.current",
		Pattern: "tailer1 RUNNING$", FatalPattern: `\] FATAL `}
	if c.Name != want.Name || c.Type != want.Type || c.Path != want.Path || c.Pattern != want.Pattern || c.FatalPattern != want.FatalPattern {
		t.Fatalf("check %+v\nwant %+v", c, want)
	}
}

func TestServiceLogCheckInvalid(t *testing.T) {
	for _, tt := range []struct{ name, check, want string }{
		{"relative path", `{type: log, path: x.log, pattern: RUNNING}`,
			`agent.yaml:7: services.tailer1.checks.0.path: a log check needs the log file's absolute path (path: "{{.LogDir}}/Prefix.log.current"), got "x.log"`},
		{"no path", `{type: log, pattern: RUNNING}`, `services.tailer1.checks.0.path: a log check needs the log file's absolute path`},
		{"no pattern", `{type: log, path: /var/log/x.log}`,
			`agent.yaml:7: services.tailer1.checks.0.pattern: a log check needs pattern: the regular expression of the line it waits for`},
		{"bad pattern", `{type: log, path: /var/log/x.log, pattern: "RUN(NING"}`,
			"agent.yaml:7: services.tailer1.checks.0.pattern: pattern \"RUN(NING\" is not a regular expression: error parsing regexp: missing closing ): `RUN(NING`"},
		{"bad fatal pattern", `{type: log, path: /var/log/x.log, pattern: RUNNING, fatal_pattern: "*FATAL"}`,
			"services.tailer1.checks.0.fatal_pattern: fatal_pattern \"*FATAL\" is not a regular expression: error parsing regexp: missing argument to repetition operator: `*`"},
		{"pattern on a tcp check", `{type: tcp, port: "22000", pattern: RUNNING}`,
			`agent.yaml:7: services.tailer1.checks.0.pattern: pattern is for log checks only (this is a tcp check)`},
		{"bad template", `{type: log, path: "{{.Nope}}/x.log", pattern: RUNNING}`, `services.tailer1.checks.0.path: template "{{.Nope}}/x.log"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [single-node]\n" + standinDefaults + "services:\n  tailer1: {checks: [" + tt.check + "]}\n"})
			_, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestServiceSecretsInvalid(t *testing.T) {
	for _, tt := range []struct{ name, services, want string }{
		{"relative env file", "  mine: {command: [x], env_files: [secrets.env]}\n", `agent.yaml:7: services.mine.env_files.0: "secrets.env" is not an absolute path`},
		{"env file twice", "  mine: {command: [x], env_files: [/s.env, /s.env]}\n", `services.mine.env_files.1: /s.env is listed twice`},
		{"bad env name", "  mine: {command: [x], env: {A-B: x}}\n", `services.mine.env.A-B: "A-B" is not a variable name`},
		{"control character", "  mine: {command: [x], env: {A: \"x\\ry\"}}\n", `services.mine.env.A: the value holds the control character U+000D`},
		{"a mark", "  mine: {command: [x], env: {DHVISOR_AGENT: /x}}\n", `services.mine.env.DHVISOR_AGENT: DHVISOR_AGENT is dhvisor's own mark`},
		{"credentials on exec", "  mine: {command: [x], runtime: exec, credentials: {db: /etc/db.pw}}\n", `services.mine.credentials: credentials are systemd's LoadCredential= and need runtime systemd (this service's runtime is exec): use env_files`},
		{"credential name", "  mine: {command: [x], runtime: systemd, credentials: {a/b: /etc/db.pw}}\n", `services.mine.credentials.a/b: "a/b" is not a credential name`},
		{"credential path", "  mine: {command: [x], runtime: systemd, credentials: {db: db.pw}}\n", `services.mine.credentials.db: "db.pw" is not an absolute path`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [single-node]\n" + standinDefaults + "services:\n" + tt.services})
			_, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
	dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [single-node]\n" + standinDefaults + "services:\n  mine: {command: [x], runtime: systemd, env: {A: b}, env_files: [/etc/dhvisor/secrets/mine.env], credentials: {db: /etc/db.pw}}\n"})
	n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if s := n.Services["mine"]; !reflect.DeepEqual(s.EnvFiles, []string{"/etc/dhvisor/secrets/mine.env"}) || s.Credentials["db"] != "/etc/db.pw" {
		t.Fatalf("secrets not kept: %+v %+v", s.EnvFiles, s.Credentials)
	}
}

func TestServiceEnvFilesTemplate(t *testing.T) {
	dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [single-node]\n" + standinDefaults + "  env_files: [\"/etc/dhvisor/secrets/{{.Name}}.env\"]\n"})
	n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"configuration_server", "db_query_server"} {
		if got := n.Services[name].EnvFiles; !reflect.DeepEqual(got, []string{"/etc/dhvisor/secrets/" + name + ".env"}) {
			t.Errorf("%s: env_files %q", name, got)
		}
	}
}
