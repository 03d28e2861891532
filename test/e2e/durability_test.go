package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/test/need"
)

// TestFullStateDiskStartsNoSecondCopy: with the state directory on a full
// tmpfs, a killed service is not started again (a process the state file
// cannot record would be started a second time by the next agent), dhctl
// status says why and exits 1, and once space is freed the service is
// started and the agent is ready again.
func TestFullStateDiskStartsNoSecondCopy(t *testing.T) {
	need.Root(t, "to mount a small tmpfs as the agent's state directory")
	n := newNodeNoStart(t, "services:\n  a: {}\n")
	stateDir := filepath.Join(n.dir, "state")
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "dhv-e2e-state", stateDir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	// Registered before the node's own teardown runs, so it runs after.
	t.Cleanup(func() { _ = exec.Command("umount", "-l", stateDir).Run() })
	n.startAgent()
	n.eventually(30*time.Second, "a OK", n.allOK(1))
	// The stand-in records its start itself, a moment after it runs.
	n.eventually(30*time.Second, "a's start recorded", func() bool { return count(n.events(), "start", "a") == 1 })
	first := n.mustStatus()["a"].Pid

	// Fill the disk.
	fill := filepath.Join(stateDir, "fill")
	f, err := os.Create(fill)
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 4096)
	for {
		if _, err := f.Write(block); err != nil {
			if !strings.Contains(err.Error(), "no space left") {
				t.Fatalf("filling the tmpfs: %v", err)
			}
			break
		}
	}
	f.Close()

	_ = syscall.Kill(int(first), syscall.SIGKILL)
	n.eventually(30*time.Second, "a refused a start, naming the state file", func() bool {
		st, err := n.status()
		return err == nil && st["a"].Pid == 0 && strings.Contains(st["a"].Message, "cannot be written")
	})
	out, code := n.dhctl("status", "--local")
	if code != 1 || !strings.Contains(out, "NOT READY") || !strings.Contains(out, "no space left on device") {
		t.Fatalf("dhctl status exit %d, want 1 naming the full disk:\n%s", code, out)
	}
	time.Sleep(2 * time.Second) // two save retries: a start would show now
	if got := count(n.events(), "start", "a"); got != 1 {
		t.Fatalf("%d starts of a while the state could not be saved, want only the first", got)
	}

	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	n.eventually(30*time.Second, "a started again once the state saves", func() bool {
		st, err := n.status()
		return err == nil && st["a"].State == "OK" && st["a"].Pid != 0 && st["a"].Pid != first
	})
	if out, code := n.dhctl("status", "--local"); code != 0 || strings.Contains(out, "NOT READY") {
		t.Fatalf("dhctl status exit %d after the disk was freed:\n%s", code, out)
	}
}
