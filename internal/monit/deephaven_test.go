package monit

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// dhService is the part of an imported service the Deephaven node test
// checks, decoded from the node as internal/config would decode it.
type dhService struct {
	Pidfile string `yaml:"pidfile"`
	Start   struct {
		Command []string `yaml:"command"`
		User    string   `yaml:"user"`
		Group   string   `yaml:"group"`
		Timeout string   `yaml:"timeout"`
	} `yaml:"start"`
	Stop struct {
		Command []string `yaml:"command"`
	} `yaml:"stop"`
	DependsOn []string `yaml:"depends_on"`
	Groups    []string `yaml:"groups"`
	Restart   struct {
		Limit       int    `yaml:"limit"`
		Window      string `yaml:"window"`
		LimitAction string `yaml:"limit_action"`
	} `yaml:"restart"`
	Checks []struct {
		Type     string `yaml:"type"`
		Port     int    `yaml:"port"`
		Failures int    `yaml:"failures"`
		Interval string `yaml:"interval"`
	} `yaml:"checks"`
}

func TestDeephavenNode(t *testing.T) {
	dir, err := filepath.Abs(filepath.Join("testdata", "corpus", "deephaven"))
	if err != nil {
		t.Fatal(err)
	}
	monit := monitPath(t)
	if ok, out := monitAccepts(t, monit, dir+"/*.conf"); !ok {
		t.Fatalf("monit refuses the Deephaven node:\n%s", out)
	}
	im, err := Load([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	if im.Interval != 30*time.Second || im.StartDelay != time.Minute {
		t.Errorf("interval %s, start delay %s; want 30s, 1m", im.Interval, im.StartDelay)
	}
	got := map[string]dhService{}
	for _, s := range im.Services {
		var d dhService
		if err := s.Node.Decode(&d); err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		got[s.Name] = d
		if s.File != filepath.Join(dir, s.Name+".conf") || s.Line != 4 {
			t.Errorf("%s comes from %s:%d; want its own file, line 4", s.Name, s.File, s.Line)
		}
		checkOrigins(t, s)
	}
	if len(got) != 12 {
		t.Fatalf("%d services imported; want 12", len(got))
	}
	cs := got["iris_controller"]
	if want := []string{"/usr/illumon/latest/bin/iris_launch", "iris_controller", "start"}; !reflect.DeepEqual(cs.Start.Command, want) {
		t.Errorf("start command %q; want %q", cs.Start.Command, want)
	}
	if cs.Start.User != "nobody" || cs.Start.Group != "nogroup" || cs.Start.Timeout != "2m0s" {
		t.Errorf("start as %s:%s within %s; want nobody:nogroup within 2m0s", cs.Start.User, cs.Start.Group, cs.Start.Timeout)
	}
	if want := []string{"authentication_server", "db_query_server", "db_merge_server"}; !reflect.DeepEqual(cs.DependsOn, want) {
		t.Errorf("depends_on %q; want %q", cs.DependsOn, want)
	}
	if cs.Pidfile != "/etc/sysconfig/illumon.d/dh_pids/iris_controller.pid" {
		t.Errorf("pidfile %q", cs.Pidfile)
	}
	if cs.Restart.Limit != 5 || cs.Restart.Window != "2m30s" || cs.Restart.LimitAction != "fail" {
		t.Errorf("restart %+v; want 5 within 2m30s (5 cycles of 30s), fail", cs.Restart)
	}
	if len(cs.Checks) != 1 || cs.Checks[0].Port != 22051 || cs.Checks[0].Failures != 3 || cs.Checks[0].Interval != "30s" {
		t.Errorf("checks %+v; want tcp 22051, 3 failures, every 30s", cs.Checks)
	}
	if len(got["configuration_server"].DependsOn) != 0 {
		t.Errorf("configuration_server depends on %q", got["configuration_server"].DependsOn)
	}
	out, err := im.YAML()
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Services map[string]dhService `yaml:"services"`
	}
	if err := yaml.Unmarshal(out, &back); err != nil {
		t.Fatalf("YAML() does not read back: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(back.Services, got) {
		t.Errorf("YAML() reads back differently:\n%s", out)
	}
	line := "pidfile: /etc/sysconfig/illumon.d/dh_pids/tailer1.pid # " + filepath.Join(dir, "tailer1.conf") + ":4"
	if !strings.Contains(string(out), line) {
		t.Errorf("YAML() lacks %q:\n%s", line, out)
	}
	if !strings.Contains(string(out), "00-daemon.conf:4: set httpd unixsocket /var/run/monit.sock allow localhost") {
		t.Errorf("YAML() does not list set httpd as not applied:\n%s", out)
	}
}

// checkOrigins asserts every node of a service is positioned and filed.
func checkOrigins(t *testing.T, s Service) {
	t.Helper()
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Line < 1 || n.Column < 1 || s.Origins[n] == "" {
			t.Errorf("%s: node %q has no position (%d:%d) or file %q", s.Name, n.Value, n.Line, n.Column, s.Origins[n])
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(s.Node)
}
