// Package need is how a test says what it cannot run without. In CI
// (CI=true), where scripts/setup.sh provides all of it, a missing part
// fails the test: a skipped integration test there would hide it. Elsewhere
// the test is skipped.
package need

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Missing fails (in CI) or skips the test, which needs what.
func Missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("this test needs %s; in CI it must run (scripts/setup.sh provides it)", what)
	}
	t.Skipf("this test needs %s", what)
}

// Root is Missing unless the test runs as root, which why needs.
func Root(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "root ("+why+")")
	}
}

// Docker is Missing unless the machine's Docker engine answers.
func Docker(t testing.TB) {
	t.Helper()
	if out, err := exec.Command("docker", "version", "--format", "{{.Server.APIVersion}}").CombinedOutput(); err != nil {
		Missing(t, "a Docker engine (docker version: "+err.Error()+": "+strings.TrimSpace(string(out))+")")
	}
}

// Monit is Missing unless monit (Debian's 5.33 here) runs.
func Monit(t testing.TB) {
	t.Helper()
	if out, err := exec.Command("monit", "-V").CombinedOutput(); err != nil {
		Missing(t, "monit (monit -V: "+err.Error()+": "+strings.TrimSpace(string(out))+")")
	}
}

// RootOnlyDir returns a new directory that nobody but root can write, on
// a path nobody but root can write (t.TempDir is under the world-writable
// /tmp), for files the agent must trust; it is removed when the test ends.
// Missing unless the test runs as root.
func RootOnlyDir(t testing.TB) string {
	t.Helper()
	Root(t, "files only root can write")
	dir, err := os.MkdirTemp("/run", "dhvisor-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
