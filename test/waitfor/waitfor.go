// Package waitfor polls for what another process writes: tests wait for
// an outcome, never for a fixed time.
package waitfor

import (
	"os"
	"testing"
	"time"
)

// File waits until file exists and holds exactly want, failing t after timeout.
func File(t testing.TB, file, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(file)
		if err == nil && string(b) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %q, want %q", file, b, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
