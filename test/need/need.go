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
