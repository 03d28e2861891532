package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeMonit lays out monit control files the way Deephaven's installer
// does, one per service, and returns their directory.
func writeMonit(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "monit")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestServicesFromMonitFiles(t *testing.T) {
	dir := writeMonit(t, map[string]string{
		"configuration_server.conf": `check process configuration_server with pidfile /run/dh/configuration_server.pid
    start program = "/usr/illumon/latest/bin/iris configuration_server start" as uid nobody with timeout 90 seconds
    stop program = "/usr/illumon/latest/bin/iris configuration_server stop" as uid nobody
    group infra
`,
		"web_api_service.conf": `check process web_api_service with pidfile /run/dh/web_api_service.pid
    start program = "/usr/illumon/latest/bin/iris web_api_service start" as uid nobody
    depends on configuration_server
    set httpd port 2812 allow localhost
`,
	})
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	body := "node: n\nroles_dir: none\nmonit:\n  include: ['" + dir + "/*.conf']\nservices:\n  web_api_service: {stop_timeout: 2m}\n"
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := LoadAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cs := n.Services["configuration_server"]
	if cs == nil || cs.Start == nil || cs.Start.Command[0] != "/usr/illumon/latest/bin/iris" || cs.Pidfile != "/run/dh/configuration_server.pid" || cs.User != "nobody" {
		t.Fatalf("configuration_server from its monit file: %+v", cs)
	}
	if cs.StartTimeout.D() != 90*time.Second && cs.Start.Timeout.D() != 90*time.Second {
		t.Errorf("the start program's timeout is lost: %+v %+v", cs.StartTimeout, cs.Start)
	}
	if !strings.HasPrefix(cs.Origin, filepath.Join(dir, "configuration_server.conf")+":") {
		t.Errorf("origin %q, want the monit file and line", cs.Origin)
	}
	web := n.Services["web_api_service"]
	if web == nil || web.StopTimeout.D() != 2*time.Minute || len(web.DependsOn) != 1 {
		t.Fatalf("web_api_service with agent.yaml's override: %+v", web)
	}
	// What Envoy needs of it comes from the catalogue; how it runs, only
	// from the monit file.
	if web.Envoy == nil || len(web.Command) != 0 {
		t.Errorf("web_api_service: envoy %+v, command %v; want the catalogue's routing and no launch command", web.Envoy, web.Command)
	}
	if names := n.Names(); names[0] != "configuration_server" {
		t.Errorf("start order %v", names)
	}
	found := false
	for _, na := range n.NotApplied {
		found = found || strings.Contains(na.Text, "httpd")
	}
	if !found {
		t.Errorf("set httpd is not listed as not applied: %+v", n.NotApplied)
	}
}

func TestMonitFileErrorsNameTheMonitFile(t *testing.T) {
	dir := writeMonit(t, map[string]string{
		"bad.conf": "check process a with pidfile /run/a.pid\n    start program = \"/bin/a\"\n    depends on nosuch\n",
	})
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(cfg, []byte("node: n\nroles_dir: none\nmonit: {include: ['"+dir+"/*.conf']}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadAgent(cfg)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "bad.conf")+":3") {
		t.Fatalf("error %v, want one naming bad.conf:3", err)
	}
}
