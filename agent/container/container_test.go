package container_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dhvisor/dhvisor/agent/container"
	"github.com/dhvisor/dhvisor/agent/state"
	"github.com/dhvisor/dhvisor/agent/supervise"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/test/devcluster"
	"github.com/dhvisor/dhvisor/test/envoyfixture"
	"github.com/dhvisor/dhvisor/test/need"
	"github.com/dhvisor/dhvisor/test/syncbuf"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Test images, kept on the engine: BuildImage makes them again only when
// the stand-in changed.
const (
	imageV1   = "dhv-envoy-test:v1"
	imageV2   = "dhv-envoy-test:v2"
	imageLoop = "dhv-envoy-test:crashloop"
)

var fastTiming = container.Timing{Recheck: time.Second, FileCheck: 200 * time.Millisecond, Reconnect: 200 * time.Millisecond}

// envoyNode is one agent's Manager running only the Envoy container,
// against a real Docker engine.
type envoyNode struct {
	t      *testing.T
	dir    string
	host   string
	name   string // the container's name
	listen int
	admin  int
	pem    string // a mounted certificate
	mgr    *supervise.Manager
	stop   func()
	log    syncbuf.Buffer // the agent's log, shown when the test fails
}

type nodeOpts struct {
	host  string // engine; default the machine's
	image string
}

func (n *envoyNode) yaml(o nodeOpts) string {
	args := fmt.Sprintf("[%s]", strings.Join(envoyfixture.Args(n.listen, n.admin), ", "))
	return fmt.Sprintf(`node: envoytest
roles: [envoy]
state_dir: %s/state
envoy:
  container: %s
  image: %s
  docker: %s
  args: %s
  listen_port: %d
  admin_port: %d
  bootstrap: %s/bootstrap.yaml
  mounts: [{source: %s, target: /etc/envoy/tls/server.pem}]
  ready: {interval: 200ms, timeout: 200ms, failures: 2}
  start_grace: 5s
  stop_timeout: 1s
  restart: {min_uptime: 2s, backoff_initial: 50ms, backoff_max: 200ms, limit: 3, window: 1m}
`, n.dir, n.name, o.image, n.host, args, n.listen, n.admin, n.dir, n.pem)
}

func startNode(t *testing.T, o nodeOpts) *envoyNode {
	t.Helper()
	if o.host == "" {
		o.host = envoyfixture.DefaultHost
	}
	if o.image == "" {
		o.image = imageV1
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	ports, err := devcluster.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	n := &envoyNode{t: t, dir: t.TempDir(), host: o.host, name: "dhvtest-envoy-" + hex.EncodeToString(suffix), listen: ports[0], admin: ports[1]}
	n.pem = filepath.Join(n.dir, "server.pem")
	write(t, n.pem, "certificate 1")
	write(t, filepath.Join(n.dir, "bootstrap.yaml"), "# a site's own bootstrap\n")
	t.Cleanup(func() {
		_, _ = envoyfixture.Docker(context.Background(), n.host, "rm", "-f", n.name)
		if t.Failed() {
			t.Logf("agent log:\n%s", n.log.String())
		}
	})
	n.run(o)
	return n
}

func write(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	// Replaced by rename, as certificate tools do.
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func (n *envoyNode) load(o nodeOpts) *config.Node {
	n.t.Helper()
	file := filepath.Join(n.dir, "agent.yaml")
	if err := os.WriteFile(file, []byte(n.yaml(o)), 0o644); err != nil {
		n.t.Fatal(err)
	}
	node, err := config.LoadAgent(file)
	if err != nil {
		n.t.Fatal(err)
	}
	return node
}

// run starts an agent's manager (again, after stop: an agent restart).
func (n *envoyNode) run(o nodeOpts) {
	n.t.Helper()
	if o.host == "" {
		o.host = n.host
	}
	if o.image == "" {
		o.image = imageV1
	}
	node := n.load(o)
	eng, err := container.NewDocker(n.host)
	if err != nil {
		n.t.Fatal(err)
	}
	// The agent's log is shown when the test fails.
	var out io.Writer = &n.log
	if testing.Verbose() {
		out = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(out, nil))
	rts := supervise.Runtimes{config.RuntimeDocker: container.New(eng, fastTiming, log)}
	n.mgr = supervise.NewManager(node, rts, state.New(filepath.Join(n.dir, "state", "agent-state.json")), log)
	if err := os.MkdirAll(filepath.Join(n.dir, "state"), 0o750); err != nil {
		n.t.Fatal(err)
	}
	n.mgr.Load(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = n.mgr.Run(ctx)
	}()
	stopped := false
	n.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
			eng.Close()
		}
	}
	n.t.Cleanup(n.stop)
}

func (n *envoyNode) status() supervise.Status {
	sts, err := n.mgr.Status([]string{config.EnvoyService})
	if err != nil {
		n.t.Fatal(err)
	}
	return sts[0]
}

// waitFor polls the status until ok accepts it (the tests watch from the
// outside, as an operator's dhctl would).
func (n *envoyNode) waitFor(what string, timeout time.Duration, ok func(supervise.Status) bool) supervise.Status {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := n.status()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: not within %s; status %+v", what, timeout, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *envoyNode) waitOK(what string) supervise.Status {
	n.t.Helper()
	st := n.waitFor(what, 30*time.Second, func(st supervise.Status) bool { return st.State == supervise.OK && st.Container != nil })
	if !envoyfixture.Ready(n.admin) {
		n.t.Fatalf("%s: status OK but /ready does not answer", what)
	}
	return st
}

// control runs an operator's action on the Envoy service, as dhctl does.
func (n *envoyNode) control(act supervise.Action, block bool) {
	n.t.Helper()
	if err := n.mgr.Control(context.Background(), act, []string{config.EnvoyService}, block, nil); err != nil {
		n.t.Fatal(err)
	}
}

// wantCertificate checks that the container sees the mounted certificate
// with that content.
func (n *envoyNode) wantCertificate(content string) {
	n.t.Helper()
	got, err := envoyfixture.FileDigest(n.admin, "/etc/envoy/tls/server.pem")
	if err != nil {
		n.t.Fatal(err)
	}
	if want := sha256hex(content); got != want {
		n.t.Fatalf("the container sees the certificate %s, want %s (%q)", got, want, content)
	}
}

func (n *envoyNode) docker(args ...string) string {
	n.t.Helper()
	out, err := envoyfixture.Docker(context.Background(), n.host, args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// creations lists the engine's create events for the container since t0
// (time in ns, container id).
func (n *envoyNode) creations(t0 time.Time) []string {
	n.t.Helper()
	out := n.docker("events", "--since", fmt.Sprintf("%d.%09d", t0.Unix(), t0.Nanosecond()), "--until", fmt.Sprint(time.Now().Unix()+1),
		"--filter", "type=container", "--filter", "event=create", "--filter", "container="+n.name, "--format", "{{.TimeNano}} {{.ID}}")
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

// recreatedOnce waits for the container that replaces first's, serving, and
// checks that, several checks later, it is the only one created since t0.
func (n *envoyNode) recreatedOnce(what string, first supervise.Status, t0 time.Time) supervise.Status {
	n.t.Helper()
	st := n.waitFor(what, 20*time.Second, func(st supervise.Status) bool {
		return st.State == supervise.OK && st.Container != nil && st.Container.ID != first.Container.ID
	})
	if st.Restarts != first.Restarts {
		n.t.Errorf("a configuration change counted as a restart: %d -> %d", first.Restarts, st.Restarts)
	}
	time.Sleep(3 * fastTiming.Recheck)
	if c := n.creations(t0); len(c) != 1 {
		n.t.Fatalf("%s: %d containers created since %d, want exactly 1: %q", what, len(c), t0.UnixNano(), c)
	}
	if id := n.status().Container.ID; id != st.Container.ID {
		n.t.Fatalf("%s: recreated again: %s -> %s", what, st.Container.ID, id)
	}
	return st
}

// containers lists every container of that name, running or not.
func (n *envoyNode) containers() []string {
	out := n.docker("ps", "-a", "--filter", "name=^"+n.name+"$", "--format", "{{.ID}} {{.Status}}")
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

func buildImages(t *testing.T, host string) {
	t.Helper()
	ctx := context.Background()
	for tag, env := range map[string][]string{imageV1: nil, imageV2: {"DH_FIXTURE_VERSION=2"}, imageLoop: {"DH_STANDIN_FAULT=exit-at-start:3"}} {
		if err := envoyfixture.BuildImage(ctx, host, tag, env...); err != nil {
			t.Fatal(err)
		}
	}
}

func TestEnvoyContainerKilledIsRestartedAndCounted(t *testing.T) {
	need.Docker(t)
	buildImages(t, envoyfixture.DefaultHost)
	n := startNode(t, nodeOpts{})
	first := n.waitOK("first start")
	if first.Container.Name != n.name || first.Container.Image != imageV1 {
		t.Fatalf("container %+v", first.Container)
	}
	n.docker("kill", n.name)
	st := n.waitOK("restart after docker kill")
	if st.Restarts != first.Restarts+1 || st.PID == first.PID {
		t.Fatalf("restarts %d -> %d, pid %d -> %d", first.Restarts, st.Restarts, first.PID, st.PID)
	}
	if st.LastExit == nil || st.LastExit.Signal != "SIGKILL" {
		t.Errorf("last exit %+v, want killed by SIGKILL", st.LastExit)
	}
	if st.Container.ID != first.Container.ID {
		t.Errorf("a killed container is started again, not recreated: %s -> %s", first.Container.ID, st.Container.ID)
	}

	// An agent restart takes the running container over: no restart.
	n.stop()
	n.run(nodeOpts{})
	again := n.waitOK("after an agent restart")
	if again.PID != st.PID || again.Container.ID != st.Container.ID || again.Restarts != st.Restarts {
		t.Fatalf("agent restart changed the container: %+v -> %+v", st, again)
	}
	if c := n.containers(); len(c) != 1 {
		t.Fatalf("containers %q", c)
	}

	// Removed behind the agent's back: created again, and counted.
	n.docker("rm", "-f", n.name)
	st = n.waitFor("created again after docker rm", 20*time.Second, func(st supervise.Status) bool {
		return st.State == supervise.OK && st.Container != nil && st.Container.ID != again.Container.ID
	})
	if st.Restarts != again.Restarts+1 {
		t.Fatalf("restarts %d -> %d", again.Restarts, st.Restarts)
	}
	if c := n.containers(); len(c) != 1 {
		t.Fatalf("containers %q", c)
	}
}

func TestEnvoyCertificateReplacedRecreatesOnce(t *testing.T) {
	need.Docker(t)
	buildImages(t, envoyfixture.DefaultHost)
	n := startNode(t, nodeOpts{})
	first := n.waitOK("first start")
	t0 := time.Now()
	write(t, n.pem, "certificate 2")
	time.Sleep(50 * time.Millisecond)
	// The key follows the certificate a moment later, as tools write them;
	// the runtime waits for the files to settle before it recreates.
	write(t, n.pem, "certificate 2 with its key")
	n.recreatedOnce("recreated after the certificate changed", first, t0)
	n.wantCertificate("certificate 2 with its key")

	// Unmonitored, the agent keeps its hands off; monitored again, it
	// applies the change it held.
	n.control(supervise.Unmonitor, false)
	held := n.status()
	write(t, n.pem, "certificate 3")
	time.Sleep(2 * fastTiming.Recheck)
	if st := n.status(); st.Container.ID != held.Container.ID || st.State != supervise.NotMonitored {
		t.Fatalf("an unmonitored container was touched: %+v", st)
	}
	t1 := time.Now()
	n.control(supervise.Monitor, false)
	n.recreatedOnce("recreated once monitored again", held, t1)
	n.wantCertificate("certificate 3")
}

// An unmonitored Envoy stays the agent's across an agent restart: shown
// with its process, left as it is though its certificate changed while
// the agent was down, and stopped when the operator says stop.
func TestEnvoyUnmonitoredKeptAcrossAgentRestart(t *testing.T) {
	need.Docker(t)
	buildImages(t, envoyfixture.DefaultHost)
	n := startNode(t, nodeOpts{})
	first := n.waitOK("first start")
	n.control(supervise.Unmonitor, false)
	n.stop()
	write(t, n.pem, "certificate 2")
	n.run(nodeOpts{})
	st := n.waitFor("re-adopted, unmonitored", 10*time.Second, func(st supervise.Status) bool { return st.State == supervise.NotMonitored })
	if st.PID != first.PID || st.Container == nil || st.Container.ID != first.Container.ID {
		t.Fatalf("after the agent restart: %+v, want the running container %s (pid %d)", st, first.Container.ID, first.PID)
	}
	time.Sleep(3 * fastTiming.FileCheck)
	if st := n.status(); st.State != supervise.NotMonitored || st.PID != first.PID {
		t.Fatalf("an unmonitored container was touched: %+v", st)
	}
	n.control(supervise.Stop, true)
	n.waitFor("stopped", 30*time.Second, func(st supervise.Status) bool { return st.State == supervise.Stopped && st.PID == 0 })
	if running := n.docker("inspect", "--format", "{{.State.Running}}", n.name); running != "false" {
		t.Fatalf("dhctl stop left the container running (%s)", running)
	}
	// Started again, it runs with the certificate written meanwhile.
	n.control(supervise.Start, true)
	n.waitOK("started again")
	n.wantCertificate("certificate 2")
}

func TestEnvoyImageChangedRecreatesOnce(t *testing.T) {
	need.Docker(t)
	buildImages(t, envoyfixture.DefaultHost)
	n := startNode(t, nodeOpts{})
	first := n.waitOK("first start")
	t0 := time.Now()
	// The operator points envoy.image at a new tag and reloads.
	if _, err := n.mgr.Reload(context.Background(), n.load(nodeOpts{image: imageV2})); err != nil {
		t.Fatal(err)
	}
	st := n.recreatedOnce("recreated on the new image", first, t0)
	if st.Container.Image != imageV2 {
		t.Fatalf("image %s, want %s", st.Container.Image, imageV2)
	}
	if img := n.docker("inspect", "--format", "{{.Config.Image}}", n.name); img != imageV2 {
		t.Fatalf("engine says image %s", img)
	}
}

func TestEnvoyTagMovedRecreatesOnce(t *testing.T) {
	need.Docker(t)
	const moving = "dhv-envoy-test:moving"
	ctx := context.Background()
	if err := envoyfixture.BuildImage(ctx, envoyfixture.DefaultHost, moving); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = envoyfixture.Docker(context.Background(), envoyfixture.DefaultHost, "rmi", "-f", moving)
	})
	n := startNode(t, nodeOpts{image: moving})
	first := n.waitOK("first start")
	t0 := time.Now()
	// The same tag now names another image (a docker pull of a moved tag).
	if err := envoyfixture.BuildImage(ctx, envoyfixture.DefaultHost, moving, "DH_FIXTURE_VERSION=moved"); err != nil {
		t.Fatal(err)
	}
	n.recreatedOnce("recreated on the image the tag names now", first, t0)
	want := n.docker("image", "inspect", "--format", "{{.Id}}", moving)
	if got := n.docker("inspect", "--format", "{{.Image}}", n.name); got != want {
		t.Fatalf("container runs image %s, the tag names %s", got, want)
	}
}

func TestEnvoyHungIsRestarted(t *testing.T) {
	need.Docker(t)
	buildImages(t, envoyfixture.DefaultHost)
	n := startNode(t, nodeOpts{})
	first := n.waitOK("first start")
	// A hung Envoy answers nothing and ignores SIGTERM: the ready probe
	// times out, and the stop ends in SIGKILL after stop_timeout.
	if err := envoyfixture.Fault(n.admin, "hang"); err != nil {
		t.Fatal(err)
	}
	n.waitFor("restarted", 20*time.Second, func(st supervise.Status) bool { return st.Restarts == first.Restarts+1 })
	st := n.waitOK("ready again after the restart")
	if st.PID == first.PID || st.LastExit == nil || st.LastExit.Signal != "SIGKILL" {
		t.Fatalf("status %+v, last exit %+v", st, st.LastExit)
	}
}

func TestEnvoyUnreadyIsRestartedAfterFailures(t *testing.T) {
	need.Docker(t)
	buildImages(t, envoyfixture.DefaultHost)
	n := startNode(t, nodeOpts{})
	first := n.waitOK("first start")
	if err := envoyfixture.Fault(n.admin, "unhealthy"); err != nil {
		t.Fatal(err)
	}
	// ready: failures 2 at 200 ms: restarted after about 400 ms, counted.
	n.waitFor("restarted", 10*time.Second, func(st supervise.Status) bool { return st.Restarts == first.Restarts+1 })
	st := n.waitOK("ready again after the restart")
	if st.PID == first.PID {
		t.Fatal("same process")
	}
	if !strings.Contains(st.LastCheck.Name, "ready") {
		t.Errorf("last check %+v", st.LastCheck)
	}
}

func TestEnvoyCrashLoopingImageFails(t *testing.T) {
	need.Docker(t)
	buildImages(t, envoyfixture.DefaultHost)
	n := startNode(t, nodeOpts{image: imageLoop})
	st := n.waitFor("Failed after the restart limit", 30*time.Second, func(st supervise.Status) bool { return st.State == supervise.Failed })
	if st.Restarts != 3 || !strings.Contains(st.Message, "3 restarts within 1m0s") {
		t.Fatalf("status %+v", st)
	}
	// No more restarts: the container stays exited.
	started := n.docker("inspect", "--format", "{{.State.StartedAt}}", n.name)
	time.Sleep(2 * time.Second)
	if again := n.docker("inspect", "--format", "{{.State.StartedAt}} {{.State.Running}}", n.name); again != started+" false" {
		t.Fatalf("started again after Failed: %s -> %s", started, again)
	}
	if n.status().State != supervise.Failed || n.status().Restarts != 3 {
		t.Fatalf("status %+v", n.status())
	}
}

// privateDockerd starts an engine of the test's own, to stop and start
// (the machine's is shared), with the stand-in image.
func privateDockerd(t *testing.T, args ...string) *envoyfixture.Dockerd {
	t.Helper()
	// Its directory short, for the sockets below it.
	dir, err := os.MkdirTemp("/tmp", "dhvd")
	if err != nil {
		t.Fatal(err)
	}
	d, err := envoyfixture.StartDockerd(dir, args...)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Remove(); err != nil {
			t.Error(err)
		}
	})
	if err := envoyfixture.BuildImage(context.Background(), d.Host, imageV1); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestEnvoySurvivesDockerdOutage(t *testing.T) {
	need.Docker(t)
	outage := 30 * time.Second
	if testing.Short() {
		outage = 5 * time.Second
	}
	d := privateDockerd(t)
	n := startNode(t, nodeOpts{host: d.Host})
	first := n.waitOK("first start")

	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	n.waitFor("outage reported", 10*time.Second, func(st supervise.Status) bool {
		return st.State == supervise.ConnFailed && strings.Contains(st.Message, "unreachable")
	})
	// Throughout the outage it stays reported, and nothing is counted.
	for time.Since(down) < outage {
		st := n.status()
		if st.State != supervise.ConnFailed {
			t.Fatalf("during the outage: %+v", st)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	st := n.waitOK("restored after dockerd came back")
	if st.Container.ID != first.Container.ID {
		t.Errorf("the stopped container is started again, not replaced: %s -> %s", first.Container.ID, st.Container.ID)
	}
	if st.Restarts != first.Restarts+1 {
		t.Errorf("restarts %d -> %d, want one (dockerd stopped the container)", first.Restarts, st.Restarts)
	}
	if c := n.containers(); len(c) != 1 {
		t.Fatalf("containers after the outage: %q", c)
	}
}

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// With live-restore the container runs on while the engine is down: the
// agent reports the outage, then takes the same container over again, with
// no restart.
func TestEnvoyKeptThroughLiveRestore(t *testing.T) {
	need.Docker(t)
	d := privateDockerd(t, "--live-restore")
	n := startNode(t, nodeOpts{host: d.Host})
	first := n.waitOK("first start")
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	n.waitFor("outage reported", 10*time.Second, func(st supervise.Status) bool { return st.State == supervise.ConnFailed })
	if !envoyfixture.Ready(n.admin) {
		t.Fatal("Envoy stopped with the engine despite live-restore")
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	st := n.waitOK("seen again")
	if st.PID != first.PID || st.Container.ID != first.Container.ID || st.Restarts != first.Restarts {
		t.Fatalf("the running container was not kept: %+v -> %+v", first, st)
	}
}

// Following the log goes on across a restart: the new run's lines come.
func TestEnvoyLogsFollowAcrossRestart(t *testing.T) {
	need.Docker(t)
	buildImages(t, envoyfixture.DefaultHost)
	n := startNode(t, nodeOpts{})
	first := n.waitOK("first start")
	ctx, cancel := context.WithCancel(context.Background())
	var out syncbuf.Buffer
	done := make(chan error, 1)
	go func() { done <- n.mgr.Logs(ctx, config.EnvoyService, 0, true, &out) }()
	n.docker("kill", n.name)
	n.waitFor("restarted", 20*time.Second, func(st supervise.Status) bool { return st.Restarts == first.Restarts+1 && st.State == supervise.OK })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "listening on") {
		if time.Now().After(deadline) {
			t.Fatalf("the restarted container's lines did not follow; got %q", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if c := strings.Count(out.String(), "listening on"); c != 1 {
		t.Fatalf("%d start lines, want the new run's one (tail 0):\n%s", c, out.String())
	}
}
