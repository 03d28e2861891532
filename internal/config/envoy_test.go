package config

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestEnvoyServiceDefaults(t *testing.T) {
	dir := writeFiles(t, map[string]string{"agent.yaml": `node: edge1
roles: [classic-envoy]
state_dir: state
gossip: {bind: 127.0.0.1:7946}
tls: {ca: tls/ca.pem, cert: tls/agent.pem, key: tls/agent-key.pem}
envoy:
  render: {server_cert: /etc/sysconfig/deephaven/tls/envoy.pem, server_key: /etc/sysconfig/deephaven/tls/envoy.key}
`})
	n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := n.Services[EnvoyService]
	if s == nil || len(n.Services) != 1 {
		t.Fatalf("services %v", n.ServiceNames())
	}
	c := s.Container
	if s.Runtime != RuntimeDocker || c.Name != "deephaven_envoy" || c.Image != DefaultEnvoyImage || n.Agent.Envoy.Docker != "unix:///var/run/docker.sock" {
		t.Fatalf("service %+v container %+v", s, c)
	}
	if want := []string{"-c", EnvoyBootstrapPath}; !reflect.DeepEqual(s.Command, want) {
		t.Errorf("args %v", s.Command)
	}
	if s.Ports["listener"] != 8000 || s.Ports["admin"] != 8001 {
		t.Errorf("ports %v", s.Ports)
	}
	if ck := s.Checks[0]; ck.Type != CheckHTTP || ck.Port != "admin" || ck.Path != "/ready" || ck.Failures != 3 {
		t.Errorf("ready check %+v", ck)
	}
	if c.Bootstrap != filepath.Join(dir, "state", "envoy", "envoy.yaml") {
		t.Errorf("bootstrap %q", c.Bootstrap)
	}
	mounts := map[string]string{}
	for _, m := range c.Mounts {
		mounts[m.Target] = m.Source
	}
	want := map[string]string{
		EnvoyBootstrapPath:  c.Bootstrap,
		EnvoyServerCertPath: "/etc/sysconfig/deephaven/tls/envoy.pem",
		EnvoyServerKeyPath:  "/etc/sysconfig/deephaven/tls/envoy.key",
		EnvoyXDSCAPath:      filepath.Join(dir, "tls/ca.pem"),
		EnvoyXDSCertPath:    filepath.Join(dir, "tls/agent.pem"),
		EnvoyXDSKeyPath:     filepath.Join(dir, "tls/agent-key.pem"),
	}
	if !reflect.DeepEqual(mounts, want) {
		t.Errorf("mounts %v\nwant %v", mounts, want)
	}
	if s.Restart.Limit != 5 || s.Restart.MinUptime.D().Seconds() != 10 {
		t.Errorf("restart %+v", s.Restart)
	}
}

func TestEnvoyRestartLimitZero(t *testing.T) {
	for yaml, want := range map[string]int{"": 5, "  restart: {min_uptime: 1s}\n": 5, "  restart: {limit: 0}\n": 0, "  restart: {limit: 2}\n": 2} {
		dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [envoy]\nenvoy:\n  bootstrap: /b.yaml\n" + yaml})
		n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if got := n.Services[EnvoyService].Restart.Limit; got != want {
			t.Errorf("%q: limit %d, want %d", yaml, got, want)
		}
	}
}

func TestEnvoyInvalid(t *testing.T) {
	const head = "node: edge1\nroles: [envoy]\n"
	cases := []struct {
		name, yaml, want string
	}{
		{"section without the role", "node: n\nroles: [query]\n" + standinDefaults + "envoy: {image: x}\n", "agent.yaml:7: envoy: the node has no envoy role"},
		{"rendered without gossip", head + "envoy: {render: {listener_plaintext: true, xds_plaintext: true}}\n", "agent.yaml:3: envoy.bootstrap: missing: the agent renders the bootstrap from the coordinators"},
		{"listener TLS files", head + "gossip: {bind: 127.0.0.1:1}\nenvoy: {render: {xds_plaintext: true}}\n", "agent.yaml:4: envoy.render: server_cert and server_key are required"},
		{"xDS TLS files", head + "gossip: {bind: 127.0.0.1:1}\nenvoy: {render: {listener_plaintext: true}}\n", "envoy.render.xds_tls: the CA, a certificate and its key are required"},
		{"port", head + "envoy:\n  bootstrap: /b.yaml\n  admin_port: 70000\n", "agent.yaml:5: envoy.admin_port: 70000 is not a port"},
		{"same ports", head + "envoy:\n  bootstrap: /b.yaml\n  admin_port: 8000\n", "envoy.admin_port: 8000 is also listen_port"},
		{"engine address", head + "envoy:\n  bootstrap: /b.yaml\n  docker: /var/run/docker.sock\n", "agent.yaml:5: envoy.docker: \"/var/run/docker.sock\" is not a Docker Engine address"},
		{"relative mount target", head + "envoy:\n  bootstrap: /b.yaml\n  mounts: [{source: /etc/pki, target: pki}]\n", "envoy.mounts.0.target: \"pki\" is not an absolute path"},
		{"mount over the bootstrap", head + "envoy:\n  bootstrap: /b.yaml\n  mounts: [{source: /x.yaml, target: /etc/envoy/envoy.yaml}]\n", "envoy.mounts.0.target: /etc/envoy/envoy.yaml is already mounted there from /b.yaml"},
		{"restart policy", head + "envoy:\n  bootstrap: /b.yaml\n  restart: {backoff_initial: 2s, backoff_max: 1s}\n", "envoy.restart.backoff_max: backoff_max 1s is below backoff_initial 2s"},
		{"unknown field", head + "envoy:\n  bootstrap: /b.yaml\n  imag: x\n", "agent.yaml:5: envoy.imag: unknown field"},
		{"ready timeout", head + "envoy:\n  bootstrap: /b.yaml\n  ready: {interval: 1s, timeout: 2s}\n", "envoy.ready.timeout: timeout 2s is longer than interval 1s"},
		{"docker runtime elsewhere", "node: n\nroles: [query]\n" + standinDefaults + "services:\n  db_ltds: {runtime: docker}\n", "runtime \"docker\" is only for the Envoy container"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"agent.yaml": c.yaml})
			_, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
			if err == nil {
				t.Fatalf("accepted:\n%s", c.yaml)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error:\n%v\nwant it to contain %q", err, c.want)
			}
		})
	}
}
