package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/test/syncbuf"
)

// TestColdBootInOrder: three hosts, each in its own network namespace, power
// on at the same moment with no coordinator anywhere: configuration_server on
// host1 (a slow start: 3 s, after etcd, which dhvisor does not run: 2 s),
// authentication_server on host2, the two
// dispatchers and their log aggregator on host3. Each agent holds what
// depends on another node until gossip shows it OK there, so
// authentication_server starts only after host1's configuration_server is
// OK, and the dispatchers only after host2's authentication_server.
func TestColdBootInOrder(t *testing.T) {
	lab := newNetLab(t, 3)
	seeds := fmt.Sprintf("[%s:7946, %s:7946, %s:7946]", lab.addr(1), lab.addr(2), lab.addr(3))
	hosts := []struct{ services string }{
		// The stand-in's --start-delay plays a slow JVM start; etcd, which
		// dhvisor does not run, is an external dependency.
		{"  configuration_server:\n    command: [%s, --start-delay=3s]\n    external: [{name: etcd, tcp: \"127.0.0.1:2379\"}]\n"},
		{"  authentication_server: {}\n"},
		{"  log_aggregator_service: {}\n  db_query_server: {}\n  db_merge_server: {}\n"},
	}
	var nodes []*node
	for i, h := range hosts {
		n := newNodeNoStart(t, "")
		n.nodeName = fmt.Sprintf("host%d", i+1)
		services := h.services
		if strings.Contains(services, "%s") {
			services = fmt.Sprintf(services, standinCommand(n.dir))
		}
		n.writeConfig(fmt.Sprintf("gossip: {bind: %s:7946, seeds: %s}\nservices:\n", lab.addr(i+1), seeds) + services)
		nodes = append(nodes, n)
	}
	// Power on: etcd (a stand-in, slow too) and every agent at once, then
	// wait for each agent to answer.
	etcd := exec.Command("ip", "netns", "exec", lab.hosts[0], filepath.Join(binDir, "dh-standin"), "--name=etcd", "--ports=2379", "--start-delay=2s",
		"--app-log="+filepath.Join(nodes[0].dir, "logs", "etcd"), "--record="+nodes[0].record)
	etcd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := etcd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-etcd.Process.Pid, syscall.SIGKILL); _ = etcd.Wait() })
	for i, n := range nodes {
		n.log = &syncbuf.Buffer{}
		cmd := exec.Command("ip", "netns", "exec", lab.hosts[i], filepath.Join(binDir, "dhagent"), "--config", n.config)
		cmd.Stdout, cmd.Stderr = n.log, n.log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		n.agent = cmd
	}
	for _, n := range nodes {
		n.waitAnswering()
	}
	host1, host2, host3 := nodes[0], nodes[1], nodes[2]

	// While host1's configuration_server starts, host2 shows what it
	// waits for, and where; dhctl monit shows monit's Initializing.
	host2.eventually(10*time.Second, "authentication_server waiting for host1's configuration_server", func() bool {
		s := host2.mustStatus()["authentication_server"]
		return s.State == "Waiting" && s.Message == "Waiting for configuration_server (host1)" && s.Pid == 0
	})
	if out, _ := host2.dhctl("status", "--local"); !strings.Contains(out, "authentication_server: Waiting for configuration_server (host1)") {
		t.Errorf("dhctl status on host2 does not say what it waits for:\n%s", out)
	}
	if out, _ := host2.dhctl("monit", "summary"); !regexp.MustCompile(`authentication_server\s+Initializing`).MatchString(out) {
		t.Errorf("dhctl monit summary on host2 does not show the wait as Initializing:\n%s", out)
	}
	if st := host3.mustStatus(); st["db_query_server"].Pid != 0 || st["db_merge_server"].Pid != 0 {
		t.Errorf("host3 started a dispatcher before the authentication server was up: %v", st)
	}

	for _, n := range nodes {
		n.eventually(60*time.Second, n.nodeName+": every service OK", func() bool {
			for _, s := range n.mustStatus() {
				if s.State != "OK" {
					return false
				}
			}
			return true
		})
	}
	// The order, from the stand-ins' own records: each start against the
	// moment its dependency logged RUNNING (the agent's OK comes after).
	started := func(n *node, svc string) time.Time {
		t.Helper()
		evs := n.events()
		if c := count(evs, "start", svc); c != 1 {
			t.Fatalf("%s/%s started %d times, want once: %v", n.nodeName, svc, c, evs)
		}
		for _, e := range evs {
			if e.kind == "start" && e.name == svc {
				return time.Unix(0, e.at)
			}
		}
		return time.Time{}
	}
	ready := func(n *node, svc, prefix string) time.Time {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(n.dir, "logs", svc, prefix+".log.current"))
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^\[([0-9-]+ [0-9:.]+)\] INFO \S+ RUNNING$`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("%s/%s logged no RUNNING line:\n%s", n.nodeName, svc, b)
		}
		at, err := time.ParseInLocation("2006-01-02 15:04:05.000", string(m[1]), time.Local)
		if err != nil {
			t.Fatal(err)
		}
		return at
	}
	if at, etcdReady := started(host1, "configuration_server"), ready(host1, "etcd", "etcd"); !at.After(etcdReady) {
		t.Errorf("host1/configuration_server started at %s, before etcd listened at %s", at.Format(time.StampMicro), etcdReady.Format(time.StampMicro))
	}
	cfgReady := ready(host1, "configuration_server", "ConfigurationServer")
	authStart, authReady := started(host2, "authentication_server"), ready(host2, "authentication_server", "AuthenticationServer")
	if !authStart.After(cfgReady) {
		t.Errorf("host2/authentication_server started at %s, before host1/configuration_server was RUNNING at %s", authStart.Format(time.StampMicro), cfgReady.Format(time.StampMicro))
	}
	for _, svc := range []string{"db_query_server", "db_merge_server", "log_aggregator_service"} {
		if at := started(host3, svc); !at.After(authReady) {
			t.Errorf("host3/%s started at %s, before host2/authentication_server was RUNNING at %s", svc, at.Format(time.StampMicro), authReady.Format(time.StampMicro))
		}
	}
	// The dispatchers also waited for their local log aggregator.
	lasReady := ready(host3, "log_aggregator_service", "LogAggregatorService")
	for _, svc := range []string{"db_query_server", "db_merge_server"} {
		if at := started(host3, svc); !at.After(lasReady) {
			t.Errorf("host3/%s started at %s, before its log aggregator was RUNNING at %s", svc, at.Format(time.StampMicro), lasReady.Format(time.StampMicro))
		}
	}
	if st := host3.mustStatus()["db_query_server"]; strings.Contains(st.Message, "without") {
		t.Errorf("host3/db_query_server started without a dependency: %s", st.Message)
	}
}

// standinCommand is the stand-in's command line as standinDefaults gives it,
// for a service that adds arguments.
func standinCommand(dir string) string {
	return fmt.Sprintf("'%s', '--name={{.Name}}', '--ports={{.Ports}}', '--app-log={{.LogDir}}', '--record=%s'", filepath.Join(binDir, "dh-standin"), filepath.Join(dir, "record.log"))
}
