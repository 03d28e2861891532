// Package sysdbox is a TEST FIXTURE: a Docker container whose PID 1 is a
// real systemd (Debian bookworm), for the tests of the systemd runtime and
// of the packages, and for the systemd benchmark. The image is built once
// per machine by scripts/testbed/systemd-image.sh. Containers are named
// dhv-sysd-<random> and removed at the end; no other container is touched.
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

	"github.com/dhvisor/dhvisor/scripts/bench/benchkit"
	"github.com/dhvisor/dhvisor/test/need"
)

// Box is one running container.
type Box struct {
	Name string
	t    testing.TB // nil outside tests
}

// EnsureImage returns the name of the systemd image, building it (from the
// repository at root) if needed.
func EnsureImage(root string) (string, error) {
	cmd := exec.Command(filepath.Join(root, "scripts/testbed/systemd-image.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("systemd image: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Sandboxing is the docker run argument a test of a unit's sandboxing
// options (ProtectSystem=, PrivateTmp=, ...) launches its box with: without
// CAP_SYS_ADMIN the box's systemd cannot make a unit's mount namespace and
// silently runs the unit without one, so nothing of it would be tested.
var Sandboxing = []string{"--cap-add", "SYS_ADMIN"}

// Launch runs a new container of image, with extra docker run arguments,
// and waits until its systemd has booted. Close removes it.
func Launch(image string, extra ...string) (*Box, error) {
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	b := &Box{Name: "dhv-sysd-" + hex.EncodeToString(suffix[:])}
	args := []string{"run", "-d", "--name", b.Name, "--hostname", b.Name,
		"--network", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
		"--tmpfs", "/run", "--tmpfs", "/run/lock", "-e", "container=docker",
		// systemd halts on SIGRTMIN+3; SIGTERM would only make it re-execute.
		"--stop-signal", "SIGRTMIN+3"}
	args = append(append(args, extra...), image, "/lib/systemd/systemd")
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("docker run: %v: %s", err, out)
	}
	// Until systemd has set up its socket, systemctl cannot connect at
	// all; then is-system-running --wait returns once boot is over:
	// "running", or "degraded" when some unit failed.
	var state string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		out, _ := b.Exec("timeout", "60", "systemctl", "is-system-running", "--wait")
		if state = strings.TrimSpace(out); !strings.Contains(state, "Failed to connect") {
			break
		}
	}
	if state != "running" && state != "degraded" {
		logs, _ := exec.Command("docker", "logs", "--tail", "50", b.Name).CombinedOutput()
		b.Close()
		return nil, fmt.Errorf("%s: systemd did not boot (state %q): %s", b.Name, state, logs)
	}
	return b, nil
}

// Close stops and removes the container.
func (b *Box) Close() {
	_ = exec.Command("docker", "stop", "-t", "10", b.Name).Run()
	_ = exec.Command("docker", "rm", "-f", b.Name).Run()
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

// CopyIn copies a file or directory from the host into the container.
func (b *Box) CopyIn(src, dst string) error {
	if _, err := b.Exec("mkdir", "-p", filepath.Dir(dst)); err != nil {
		return err
	}
	if out, err := exec.Command("docker", "cp", src, b.Name+":"+dst).CombinedOutput(); err != nil {
		return fmt.Errorf("docker cp %s: %v: %s", src, err, out)
	}
	return nil
}

// Need is what the test needs to run a box: root (containers with the
// host's cgroups) and a Docker engine.
func Need(t testing.TB) {
	t.Helper()
	need.Root(t, "to run containers with the host's cgroups")
	need.Docker(t)
}

// Start runs a new container for the test (with extra docker run
// arguments), removed when it ends (after logging the container's journal
// if the test failed).
func Start(t testing.TB, extra ...string) *Box {
	t.Helper()
	Need(t)
	image, err := EnsureImage(RepoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Launch(image, extra...)
	if err != nil {
		t.Fatal(err)
	}
	b.t = t
	t.Cleanup(func() {
		if t.Failed() {
			if out, err := b.Exec("journalctl", "--no-pager", "-n", "200"); err == nil {
				t.Logf("journal of %s (last 200 lines):\n%s", b.Name, out)
			}
		}
		b.Close()
	})
	return b
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

// Copy is CopyIn that fails the test on an error.
func (b *Box) Copy(src, dst string) {
	b.t.Helper()
	if err := b.CopyIn(src, dst); err != nil {
		b.t.Fatal(err)
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
	root, err := benchkit.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// RunInside runs the calling test binary's test named run inside the box
// with env set (so the test knows it is inside), and logs its output when
// it ends. It is how a package tests itself against a real systemd.
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
