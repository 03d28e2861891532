package config

import (
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestExternalDependencies(t *testing.T) {
	dir := writeFiles(t, map[string]string{"agent.yaml": "roles: [infra]\n" + standinDefaults + `services:
  authentication_server:
    dependency_wait: 30s
    external:
      - {name: mariadb, systemd: mariadb.service}
      - {name: etcd-client, tcp: "10.0.0.5:2379"}
      - {name: etcd-health, http: "https://10.0.0.5:2379/health", tls_skip_verify: true}
  db_acl_write_server: {dependency_wait: 0s}
`})
	n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// The catalogue's configuration_server waits for etcd's unit where it is installed.
	if got, want := n.Services["configuration_server"].External, []External{{Name: "etcd", Systemd: "dh-etcd.service", IfInstalled: true}}; !reflect.DeepEqual(got, want) {
		t.Errorf("configuration_server external %+v, want %+v", got, want)
	}
	auth := n.Services["authentication_server"]
	want := []External{
		{Name: "mariadb", Systemd: "mariadb.service"},
		{Name: "etcd-client", TCP: "10.0.0.5:2379"},
		{Name: "etcd-health", HTTP: "https://10.0.0.5:2379/health", Expect: 200, TLSSkipVerify: true},
	}
	if !reflect.DeepEqual(auth.External, want) {
		t.Errorf("authentication_server external %+v, want %+v", auth.External, want)
	}
	for name, wait := range map[string]time.Duration{"authentication_server": 30 * time.Second, "db_acl_write_server": 0, "iris_controller": DefaultDependencyWait} {
		if got := n.Services[name].DependencyWaitOr(); got != wait {
			t.Errorf("%s: dependency wait %s, want %s", name, got, wait)
		}
	}
	if d := auth.External[2].Describe(); d != "etcd-health (http https://10.0.0.5:2379/health)" {
		t.Errorf("Describe: %q", d)
	}
}

func TestExternalDependenciesInvalid(t *testing.T) {
	for _, tt := range []struct{ name, services, want string }{
		{"no name", "  tailer1:\n    external: [{tcp: 'a:1'}]\n", `agent.yaml:8: services.tailer1.external.0: an external dependency needs a name`},
		{"two names alike", "  tailer1:\n    external:\n      - {name: e, tcp: 'a:1'}\n      - {name: e, tcp: 'b:1'}\n", `agent.yaml:10: services.tailer1.external.1.name: name "e" is also external.0's`},
		{"no target", "  tailer1:\n    external: [{name: e}]\n", `services.tailer1.external.0: give exactly one of tcp: host:port, http: URL or systemd: UNIT (got 0)`},
		{"two targets", "  tailer1:\n    external: [{name: e, tcp: 'a:1', systemd: e.service}]\n", `(got 2)`},
		{"bad address", "  tailer1:\n    external: [{name: e, tcp: etcd}]\n", `agent.yaml:8: services.tailer1.external.0.tcp: tcp "etcd" is not host:port (e.g. 127.0.0.1:2379)`},
		{"bad url", "  tailer1:\n    external: [{name: e, http: 'ftp://x/'}]\n", `services.tailer1.external.0.http: http "ftp://x/" is not an http:// or https:// URL with a host`},
		{"bad status", "  tailer1:\n    external: [{name: e, http: 'http://x/', expect: 42}]\n", `services.tailer1.external.0.expect: expect 42 is not an HTTP status`},
		{"tls on http", "  tailer1:\n    external: [{name: e, http: 'http://x/', ca_file: /ca.pem}]\n", `services.tailer1.external.0.http: ca_file and tls_skip_verify are for https URLs`},
		{"expect on tcp", "  tailer1:\n    external: [{name: e, tcp: 'x:1', expect: 200}]\n", `services.tailer1.external.0.expect: expect is for http dependencies only (this one is tcp)`},
		{"if_installed on tcp", "  tailer1:\n    external: [{name: e, tcp: 'x:1', if_installed: true}]\n", `services.tailer1.external.0.if_installed: if_installed is for systemd units only (this one is tcp)`},
		{"bad unit", "  tailer1:\n    external: [{name: e, systemd: 'etcd'}]\n", `services.tailer1.external.0.systemd: systemd "etcd" is not a unit name (e.g. dh-etcd.service)`},
		{"unknown field", "  tailer1:\n    external: [{name: e, unit: x}]\n", `services.tailer1.external.0.unit: unknown field`},
		{"wait too long", "  tailer1: {dependency_wait: 48h}\n", `agent.yaml:7: services.tailer1.dependency_wait: dependency_wait 48h0m0s is too long (expected at most 24h0m0s; 0s starts without waiting)`},
		{"wait not a duration", "  tailer1: {dependency_wait: soon}\n", `"soon" is not a duration`},
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

// FuzzParseAgentExternal: whatever a node's services say under external:
// and dependency_wait, the configuration is accepted or refused, never a
// panic, and an accepted one has only well-formed entries.
func FuzzParseAgentExternal(f *testing.F) {
	for _, seed := range []string{
		"{name: etcd, systemd: dh-etcd.service, if_installed: true}",
		"{name: e, tcp: '10.0.0.5:2379'}",
		"{name: e, http: 'https://x:2379/health', expect: 200, tls_skip_verify: true}",
		"{name: e, http: 'http://[::1]:80/', expect: 599}",
		"{name: '', tcp: ':'}",
		"{name: e, systemd: 'a@b.service', tcp: 'x:1'}",
		"[]",
		"{name: e, http: '%zz'}",
	} {
		f.Add(seed, "5m")
	}
	f.Fuzz(func(t *testing.T, entry, wait string) {
		doc := "node: f\nroles_dir: none\ndefaults: {command: [x]}\nservices:\n  svc:\n    dependency_wait: " + strconv.Quote(wait) + "\n    external: [" + entry + "]\n"
		n, err := ParseAgent("agent.yaml", []byte(doc))
		if err != nil {
			return
		}
		s := n.Services["svc"]
		if s == nil {
			return
		}
		if s.DependencyWaitOr() > maxDependencyWait {
			t.Errorf("accepted dependency_wait %s", s.DependencyWaitOr())
		}
		for _, e := range s.External {
			if e.Name == "" || e.Kind() == "" || (e.Kind() == ExternalHTTP && (e.Expect < 100 || e.Expect > 599)) {
				t.Errorf("accepted %+v from %q", e, entry)
			}
		}
	})
}
