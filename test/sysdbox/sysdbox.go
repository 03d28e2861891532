// Package sysdbox is a TEST FIXTURE: a Docker container whose PID 1 is a
// real systemd (Debian bookworm), for tests of the systemd runtime and of
// the packages. The image is built once per machine by
// scripts/testbed/systemd-image.sh. Containers are named dhv-sysd-<random>
// and removed when the test ends; no other container is touched.
//
// The container shares the host's network (there is no bridge here) and
// cgroup tree (cgroup v1 hosts included: systemd 252 runs there in its
// hybrid mode, on the /sys/fs/cgroup bind mount).
package sysdbox

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Box is one running container.
type Box struct {
	t    testing.TB
	Name string
}

// Need fails the test when Docker is not usable and the run is in CI
// (where everything the tests need must be there), and skips it
// elsewhere.
func Need(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "root (to run containers with the host's cgroups)")
	}
	if out, err := exec.Command("docker", "version", "--format", "{{.Server.Version}}").CombinedOutput(); err != nil {
		missing(t, fmt.Sprintf("a Docker engine (docker version: %v: %s)", err, strings.TrimSpace(string(out))))
	}
}

func missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("this test needs %s; scripts/setup.sh provides it", what)
	}
	t.Skipf("this test needs %s", what)
}

// Image returns the name of the systemd image, building it if needed.
func Image(t testing.TB) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(RepoRoot(t), "scripts/testbed/systemd-image.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("systemd image: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// Start runs a new container and waits until its systemd has booted.
func Start(t testing.TB) *Box {
	t.Helper()
	Need(t)
	image := Image(t)
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	b := &Box{t: t, Name: "dhv-sysd-" + hex.EncodeToString(suffix[:])}
	out, err := exec.Command("docker", "run", "-d", "--name", b.Name, "--hostname", b.Name,
		"--network", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
		"--tmpfs", "/run", "--tmpfs", "/run/lock", "-e", "container=docker",
		// systemd halts on SIGRTMIN+3; SIGTERM would only make it re-execute.
		"--stop-signal", "SIGRTMIN+3",
		image, "/lib/systemd/systemd").CombinedOutput()
	if err != nil {
		t.Fatalf("docker run: %v: %s", err, out)
	}
	t.Cleanup(b.remove)
	// is-system-running --wait returns once boot is over: "running", or
	// "degraded" when some unit failed (shown, as it may explain a failure).
	// Until systemd has set up its socket, systemctl cannot connect at all.
	var state string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		out, _ := b.Exec("timeout", "60", "systemctl", "is-system-running", "--wait")
		if state = strings.TrimSpace(out); !strings.Contains(state, "Failed to connect") {
			break
		}
	}
	switch state {
	case "running":
	case "degraded":
		failed, _ := b.Exec("systemctl", "--failed", "--no-legend")
		t.Logf("%s booted degraded: %s", b.Name, failed)
	default:
		logs, _ := exec.Command("docker", "logs", "--tail", "50", b.Name).CombinedOutput()
		t.Fatalf("%s: systemd did not boot (state %q): %s", b.Name, state, logs)
	}
	return b
}

func (b *Box) remove() {
	if b.t.Failed() {
		if out, err := b.Exec("journalctl", "--no-pager", "-n", "200"); err == nil {
			b.t.Logf("journal of %s (last 200 lines):\n%s", b.Name, out)
		}
	}
	_ = exec.Command("docker", "stop", "-t", "10", b.Name).Run()
	if out, err := exec.Command("docker", "rm", "-f", b.Name).CombinedOutput(); err != nil {
		b.t.Logf("docker rm %s: %v: %s", b.Name, err, out)
	}
}

// Exec runs a command in the container and returns its combined output.
func (b *Box) Exec(args ...string) (string, error) {
	return b.ExecEnv(nil, args...)
}

// ExecEnv is Exec with extra environment variables (KEY=VALUE).
func (b *Box) ExecEnv(env []string, args ...string) (string, error) {
	argv := []string{"exec"}
	for _, e := range env {
		argv = append(argv, "-e", e)
	}
	argv = append(append(argv, b.Name), args...)
	out, err := exec.Command("docker", argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Must is Exec that fails the test on an error.
func (b *Box) Must(args ...string) string {
	b.t.Helper()
	out, err := b.Exec(args...)
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

// Copy copies a file or directory from the host into the container.
func (b *Box) Copy(src, dst string) {
	b.t.Helper()
	b.Must("mkdir", "-p", filepath.Dir(dst))
	if out, err := exec.Command("docker", "cp", src, b.Name+":"+dst).CombinedOutput(); err != nil {
		b.t.Fatalf("docker cp %s: %v: %s", src, err, out)
	}
}

// WaitFor runs cond until it returns true or the timeout passes, failing
// the test then with what cond last said. Containers give no event for
// most of what tests wait on (a unit's pid, a journal line).
func (b *Box) WaitFor(timeout time.Duration, what string, cond func() (bool, string)) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		var ok bool
		if ok, last = cond(); ok {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s: not within %s (last: %s)", what, timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RepoRoot finds the repository from the test's working directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("repository root (go.mod) not found")
		}
		dir = parent
	}
}

// RunInside runs the calling test binary's test named run inside the box
// with env set (so the test knows it is inside), streaming its output into
// the test's log. It is how a package tests itself against a real systemd.
func (b *Box) RunInside(run string, env ...string) {
	b.t.Helper()
	self, err := os.Executable()
	if err != nil {
		b.t.Fatal(err)
	}
	b.Copy(self, "/dhv-test/pkg.test")
	out, err := b.ExecEnv(env, "/dhv-test/pkg.test", "-test.run", "^"+run+"$", "-test.v", "-test.count=1", "-test.timeout=5m")
	b.t.Logf("inside %s:\n%s", b.Name, out)
	if err != nil {
		b.t.Fatalf("tests inside the systemd container failed: %v", err)
	}
}
