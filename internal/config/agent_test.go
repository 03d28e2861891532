package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const standinDefaults = `
defaults:
  user: ""
  command: ["/bin/standin", "--name={{.Name}}", "--ports={{.Ports}}"]
`

func TestLoadSingleNode(t *testing.T) {
	dir := writeFiles(t, map[string]string{"agent.yaml": "node: n1\nroles: [single-node]\nroles_dir: roles.d\n" + standinDefaults})
	n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(n.Services); got != 12 {
		t.Fatalf("single-node has %d services, want 12: %v", got, n.ServiceNames())
	}
	if n.Levels[0][0] != "configuration_server" || len(n.Levels[0]) != 1 {
		t.Fatalf("first level = %v, want [configuration_server]", n.Levels[0])
	}
	if !reflect.DeepEqual(n.Levels[1], []string{"authentication_server"}) {
		t.Fatalf("second level = %v, want [authentication_server]", n.Levels[1])
	}
	cs := n.Services["configuration_server"]
	if want := []string{"/bin/standin", "--name=configuration_server", "--ports=22023,22054"}; !reflect.DeepEqual(cs.Command, want) {
		t.Fatalf("command = %v, want %v", cs.Command, want)
	}
	if cs.LogDir != "/var/log/deephaven/configuration_server" {
		t.Fatalf("log_dir = %q", cs.LogDir)
	}
	if cs.Checks[0].Interval.D().Seconds() != 5 || cs.Restart.Limit != 0 && cs.Restart.Window == 0 {
		t.Fatalf("defaults not applied: %+v", cs.Checks[0])
	}
	if n.Agent.StateDir != "/var/lib/dhvisor" || n.Agent.RolesDir != filepath.Join(dir, "roles.d") {
		t.Fatalf("paths: state %q roles %q", n.Agent.StateDir, n.Agent.RolesDir)
	}
}

func TestRoleAliasesAndOverrides(t *testing.T) {
	dir := writeFiles(t, map[string]string{"agent.yaml": `
roles: [classic-query]
launcher_dir: /opt/dh/bin
defaults:
  command: ["{{.LauncherDir}}/iris", "run", "{{.Name}}"]
services:
  db_query_server:
    ports: {websocket: 23052}
    env: {EXTRA_JAVA_ARGS: "-Xmx{{var \"heap\"}}"}
    restart: {limit: 7}
  tailer1: {enabled: false}
  my_tool:
    command: [/usr/local/bin/mytool]
    depends_on: [db_query_server]
vars: {heap: 8g}
`})
	n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := n.Services["tailer1"]; ok {
		t.Fatal("tailer1 disabled but present")
	}
	q := n.Services["db_query_server"]
	if q.Ports["websocket"] != 23052 || q.Ports["dispatcher"] != 22013 {
		t.Fatalf("ports merge: %v", q.Ports)
	}
	if q.Env["EXTRA_JAVA_ARGS"] != "-Xmx8g" || q.Restart.Limit != 7 || q.User != "dbquery" {
		t.Fatalf("overrides: env %v limit %d user %q", q.Env, q.Restart.Limit, q.User)
	}
	if q.Command[0] != "/opt/dh/bin/iris" {
		t.Fatalf("command %v", q.Command)
	}
	if got := n.Graph().DependsOn("my_tool"); !reflect.DeepEqual(got, []string{"db_query_server"}) {
		t.Fatalf("my_tool deps %v", got)
	}
}

func TestInvalidConfigs(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  []string // every substring must appear in the error
	}{
		{
			name:  "malformed agent yaml",
			files: map[string]string{"agent.yaml": "roles: [single-node\nnode: x\n"},
			want:  []string{"agent.yaml:", "malformed YAML"},
		},
		{
			name:  "malformed role file",
			files: map[string]string{"agent.yaml": "roles: [query]\nroles_dir: roles.d\n" + standinDefaults, "roles.d/site.yaml": "role: site\nservices: [a\n  b: c\n"},
			want:  []string{"roles.d/site.yaml:", "malformed YAML"},
		},
		{
			name:  "unknown field in override",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "services:\n  db_query_server:\n    restrt: {limit: 3}\n"},
			want:  []string{"agent.yaml:8", "services.db_query_server.restrt", "unknown field"},
		},
		{
			name:  "unknown top-level field",
			files: map[string]string{"agent.yaml": "roles: [query]\nrole: [x]\n"},
			want:  []string{"agent.yaml:2", "role: unknown field"},
		},
		{
			name:  "unknown field in site role file",
			files: map[string]string{"agent.yaml": "roles: [query]\nroles_dir: roles.d\n" + standinDefaults, "roles.d/svc.yaml": "services:\n  x:\n    comand: [a]\n"},
			want:  []string{"roles.d/svc.yaml:3", "services.x.comand", "unknown field"},
		},
		{
			name:  "a workers TCP endpoint without insecure_tcp",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "workers:\n  listen: 127.0.0.1:8131\n"},
			want:  []string{"agent.yaml:7", "workers.listen", "cannot tell who calls", "insecure_tcp: true"},
		},
		{
			name:  "insecure_tcp beyond loopback",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "workers: {insecure_tcp: true, listen: 0.0.0.0:8131}\n"},
			want:  []string{"agent.yaml:6", "workers.listen", "not a loopback address"},
		},
		{
			name:  "insecure_tcp with listen off",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "workers: {insecure_tcp: true, listen: \"off\"}\n"},
			want:  []string{"agent.yaml:6", "workers.listen", "off, but workers.insecure_tcp is true"},
		},
		{
			name:  "insecure_tcp not a bool",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "workers: {insecure_tcp: yes please}\n"},
			want:  []string{"agent.yaml:6", "insecure_tcp"},
		},
		{
			name:  "dependency cycle",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "services:\n  configuration_server:\n    depends_on: [db_query_server]\n  db_query_server: {}\n  extra: {command: [x], depends_on: [configuration_server]}\n"},
			want:  []string{"dependency cycle", "configuration_server"},
		},
		{
			name:  "cycle through site services",
			files: map[string]string{"agent.yaml": "services:\n  a: {command: [x], depends_on: [b]}\n  b: {command: [x], depends_on: [a]}\n"},
			want:  []string{"agent.yaml:2", "dependency cycle: a -> b -> a"},
		},
		{
			name:  "two services on one port",
			files: map[string]string{"agent.yaml": "roles: [single-node]\n" + standinDefaults + "services:\n  db_ltds:\n    ports: {tdp: 22016}\n"},
			want:  []string{"agent.yaml:8", "services.db_ltds.ports.tdp", "port 22016 is also used by db_tdcp"},
		},
		{
			name:  "unknown role",
			files: map[string]string{"agent.yaml": "roles: [query, quer]\n"},
			want:  []string{"agent.yaml:1", "roles.1", `unknown role "quer"`},
		},
		{
			name:  "unknown dependency",
			files: map[string]string{"agent.yaml": "services:\n  a: {command: [x], depends_on: [nope]}\n"},
			want:  []string{"agent.yaml:2", `unknown service "nope"`},
		},
		{
			name:  "wrong type",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "services:\n  db_query_server:\n    ports: {websocket: many}\n"},
			want:  []string{"agent.yaml:8", `"many" is a str, expected a number`},
		},
		{
			name:  "bad duration",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "services:\n  db_query_server:\n    stop_timeout: soon\n"},
			want:  []string{"agent.yaml:8", `"soon" is not a duration`},
		},
		{
			name:  "check port unknown",
			files: map[string]string{"agent.yaml": "services:\n  a:\n    command: [x]\n    checks: [{type: tcp, port: web}]\n"},
			want:  []string{"agent.yaml:4", "services.a.checks.0.port", `port "web" is neither`},
		},
		{
			name:  "missing command",
			files: map[string]string{"agent.yaml": "roles: [query]\nservices:\n  mine: {ports: {a: 1234}}\n"},
			want:  []string{"agent.yaml:3", "services.mine.command", "a command is required"},
		},
		{
			name:  "bad template",
			files: map[string]string{"agent.yaml": "services:\n  a:\n    command: ['{{port \"x\"}}']\n"},
			want:  []string{"agent.yaml:3", `no port named "x"`},
		},
		{
			name:  "gossip addresses",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "gossip:\n  bind: 0.0.0.0\n  seeds: [a:1, b:x]\n"},
			want:  []string{"agent.yaml:7", "gossip.bind", `"0.0.0.0" is not host:port`, "agent.yaml:8", "gossip.seeds.1"},
		},
		{
			name:  "api without tls",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "api:\n  listen: 127.0.0.1:8130\n"},
			want:  []string{"agent.yaml:7: tls.ca: required with api.listen", "agent.yaml:7: tls.cert", "agent.yaml:7: tls.key"},
		},
		{
			name:  "api with half the tls files",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "api:\n  listen: 127.0.0.1:8130\ntls:\n  ca: ca.pem\n  cert: agent.pem\n"},
			want:  []string{"agent.yaml:8: tls.key: required with api.listen"},
		},
		{
			name:  "api on a wildcard without advertise",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "api:\n  listen: 0.0.0.0:8130\ntls: {ca: a, cert: b, key: c}\n"},
			want:  []string{"agent.yaml:7: api.advertise: required when api.listen"},
		},
		{
			name:  "api on an empty host without advertise",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "api:\n  listen: :8130\ntls: {ca: a, cert: b, key: c}\n"},
			want:  []string{"agent.yaml:7: api.advertise: required when api.listen"},
		},
		{
			name:  "api addresses malformed",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "api:\n  listen: 8130\n  advertise: 0.0.0.0:8130\ntls: {ca: a, cert: b, key: c}\n"},
			want:  []string{"agent.yaml:7: api.listen: \"8130\" is not host:port", "agent.yaml:8: api.advertise: \"0.0.0.0:8130\": peers dial it"},
		},
		{
			name:  "api advertise without listen",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "api:\n  advertise: 10.0.0.5:8130\n"},
			want:  []string{"agent.yaml:7: api.listen: advertise needs listen"},
		},
		{
			name:  "unknown tls field",
			files: map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "tls:\n  certificate: x.pem\n"},
			want:  []string{"agent.yaml:7", "tls.certificate: unknown field (expected one of ca, cert, key)"},
		},
		{
			name:  "no roles",
			files: map[string]string{"agent.yaml": "node: x\n"},
			want:  []string{"the node has no roles"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, tt.files)
			_, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
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

func TestShippedCatalogue(t *testing.T) {
	c, err := LoadCatalogue("")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"infra", "query", "dis", "batch", "envoy", "single-node", "classic-infra", "classic-query"} {
		if _, ok := c.Role(r); !ok {
			t.Errorf("role %q missing", r)
		}
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"512MiB": 512 << 20, "2GB": 2e9, "1024": 1024, "1.5GiB": 3 << 29} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := ParseByteSize("lots"); err == nil {
		t.Error("ParseByteSize(lots) succeeded")
	}
}

func TestShippedLaunchCommand(t *testing.T) {
	dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [infra]\nlauncher_dir: /opt/dh/bin\n"})
	n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := n.Services["iris_controller"].Command, []string{"/opt/dh/bin/iris", "run", "iris_controller"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("command %v, want %v", got, want)
	}
	if u := n.Services["iris_controller"].User; u != "irisadmin" {
		t.Fatalf("user %q", u)
	}
}

func TestAPIAndTLS(t *testing.T) {
	dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + `api:
  listen: 0.0.0.0:8130
  advertise: 10.0.0.5:8130
tls:
  ca: tls/ca.pem
  cert: /etc/dhvisor/tls/agent-n1.pem
  key: tls/agent-n1-key.pem
`})
	n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	a := n.Agent
	if a.API.Listen != "0.0.0.0:8130" || a.API.Addr("0.0.0.0:8130") != "10.0.0.5:8130" {
		t.Errorf("api %+v", a.API)
	}
	if a.TLS.CA != filepath.Join(dir, "tls/ca.pem") || a.TLS.Cert != "/etc/dhvisor/tls/agent-n1.pem" || a.TLS.Key != filepath.Join(dir, "tls/agent-n1-key.pem") {
		t.Errorf("tls paths not resolved against the config's directory: %+v", a.TLS)
	}

	// A concrete listen host is its own advertised address.
	dir = writeFiles(t, map[string]string{"agent.yaml": "roles: [query]\n" + standinDefaults + "api: {listen: 10.0.0.6:8130}\ntls: {ca: a, cert: b, key: c}\n"})
	if n, err = LoadAgent(filepath.Join(dir, "agent.yaml")); err != nil {
		t.Fatal(err)
	}
	if got := n.Agent.API.Addr("10.0.0.6:8130"); got != "10.0.0.6:8130" {
		t.Errorf("advertised %q", got)
	}
}
