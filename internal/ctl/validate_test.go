package ctl

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateCoordinatorFile(t *testing.T) {
	dir := t.TempDir()
	good := `node: c1
api: {listen: "10.0.0.5:8125"}
raft:
  listen: "10.0.0.5:8126"
  bootstrap: [{id: c1, addr: "10.0.0.5:8126"}]
gossip: {bind: "10.0.0.5:7947"}
tls: {ca: ca.pem, cert: c.pem, key: k.pem}
envoy:
  xds: {listen: "10.0.0.5:8127"}
`
	props := filepath.Join(dir, "routes.prop")
	if err := os.WriteFile(props, []byte("envoy.xds.extra.routes.grafana.host=grafana\nenvoy.xds.extra.routes.grafana.prefix=/iris\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The old reader panicked on this file: validate crashed.
	backslash := filepath.Join(dir, "backslash.prop")
	if err := os.WriteFile(backslash, []byte("envoy.xds.extra.routes.grafana.host=grafana\n\\"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, data string
		code       int
		want       string
	}{
		{"good", good, ExitOK, "ok, coordinator c1, api 10.0.0.5:8125, raft 10.0.0.5:8126, xds 10.0.0.5:8127, 1 initial voters, 0 extra routes"},
		{"extra route in yaml", good + "  extra_routes: {grafana: {host: grafana, prefix: /grafana}}\n", ExitOK, "1 extra routes"},
		{"bad extra routes file", good + "  extra_routes_file: " + props + "\n", ExitError, props + `:2: envoy.xds.extra.routes.grafana.prefix: "/iris" is reserved by Deephaven`},
		{"backslash line in the extra routes file", good + "  extra_routes_file: " + backslash + "\n", ExitError, backslash + `:2:1: the line ends in a continuation \ but the file ends here`},
		{"bad voter list", strings.Replace(good, "{id: c1,", "{id: c2,", 1), ExitError, "raft.bootstrap: does not list this replica"},
		{"wildcard without advertise", strings.Replace(good, `listen: "10.0.0.5:8126"`, `listen: "0.0.0.0:8126"`, 1), ExitError, "raft.advertise"},
		{"unknown field", good + "rafts: 1\n", ExitError, "rafts"},
		{"wildcard with advertise", strings.Replace(good, `listen: "10.0.0.5:8126"`, `listen: "0.0.0.0:8126"`+"\n  advertise: \"10.0.0.5:8126\"", 1), ExitOK, "raft 10.0.0.5:8126"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(dir, tc.name+".yaml")
			if err := os.WriteFile(f, []byte(tc.data), 0o644); err != nil {
				t.Fatal(err)
			}
			expectValidate(t, f, tc.code, tc.want)
		})
	}
}

func TestValidateAgentWithMonitFiles(t *testing.T) {
	dir := t.TempDir()
	monitDir := filepath.Join(dir, "monit")
	if err := os.Mkdir(monitDir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := "set httpd port 2812 allow localhost\ncheck process a with pidfile /run/a.pid\n    start program = \"/bin/a start\"\n"
	if err := os.WriteFile(filepath.Join(monitDir, "a.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(monitDir, "typo.conf.off"), []byte("chek process b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, include string
		code          int
		want          string
	}{
		{"accepted, with what is not applied", monitDir + "/*.conf", ExitOK, filepath.Join(monitDir, "a.conf") + ":1: set httpd"},
		{"a file monit refuses", monitDir + "/*.off", ExitError, filepath.Join(monitDir, "typo.conf.off") + ":1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(dir, "agent.yaml")
			if err := os.WriteFile(f, []byte("node: n\nroles_dir: none\nmonit: {include: ['"+tc.include+"']}\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			expectValidate(t, f, tc.code, tc.want)
		})
	}
}

// expectValidate runs dhctl validate on file and wants its exit code and
// a line of its output.
func expectValidate(t *testing.T, file string, code int, want string) {
	t.Helper()
	var out, errOut bytes.Buffer
	if got := Execute([]string{"validate", file}, &out, &errOut); got != code {
		t.Fatalf("exit %d, want %d\n%s%s", got, code, out.String(), errOut.String())
	}
	if got := out.String() + errOut.String(); !strings.Contains(got, want) {
		t.Errorf("output lacks %q:\n%s", want, got)
	}
}
