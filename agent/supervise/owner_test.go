package supervise

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/agent/procfs"
)

// startTree runs script under sh (in a session of its own when setsid)
// and returns its pid once its processes are up; they die with the test.
func startTree(t *testing.T, script string, setsid bool) int {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: !setsid, Setsid: setsid}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if setsid {
			killSession(cmd.Process.Pid) // the session it leads: its own
		}
		_ = cmd.Wait()
	})
	return cmd.Process.Pid
}

// killSession kills what a session the test made left behind (orphans of
// a daemonizing script). Never the test's own session.
func killSession(sid int) {
	if self, err := procfs.ReadStat(os.Getpid()); err != nil || self.SID == sid || sid <= 1 {
		return
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := procfs.ReadStat(pid); err == nil && st.SID == sid && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// waitFor finds, within 10 s, a process other than the ones given whose
// stat satisfies pred.
func waitFor(t *testing.T, pred func(procfs.Stat) bool) int {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if st, err := procfs.ReadStat(pid); err == nil && pred(st) {
				return pid
			}
		}
	}
	t.Fatal("process not found")
	return 0
}

func TestOwnerOf(t *testing.T) {
	// A dispatcher whose worker is its child's child.
	disp := startTree(t, "sh -c 'sleep 300; :' & wait", false)
	worker := waitFor(t, func(st procfs.Stat) bool {
		parent, err := procfs.ReadStat(st.PPID)
		return err == nil && parent.PPID == disp && st.Comm == "sleep"
	})
	// A daemonizing service: the process it leaves runs in its session but
	// is no longer in its tree.
	daemon := startTree(t, "(sleep 300 &); sleep 300", true)
	orphan := waitFor(t, func(st procfs.Stat) bool {
		return st.SID == daemon && st.PPID != daemon && st.PID != daemon && st.Comm == "sleep"
	})
	// Another service, and a process of nobody's.
	other := startTree(t, "sleep 300", false)
	stranger := startTree(t, "sleep 300", true)

	svcs := []serviceProc{{name: "db_query_server", pid: disp}, {name: "daemonized", pid: daemon}, {name: "db_merge_server", pid: other}}
	tests := []struct {
		name string
		pid  int
		svcs []serviceProc
		want string // "" = no owner
	}{
		{"the service's process", disp, svcs, "db_query_server"},
		{"its descendant", worker, svcs, "db_query_server"},
		{"another service's process", other, svcs, "db_merge_server"},
		{"what a service daemonized, in its session", orphan, svcs, "daemonized"},
		{"a stranger's process", stranger, svcs, ""},
		{"the agent itself", os.Getpid(), svcs, ""},
		{"init", 1, svcs, ""},
		{"a pid that is not running", 1 << 30, svcs, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ownerOf(tt.pid, tt.svcs, os.Getpid())
			if got != tt.want || ok != (tt.want != "") {
				t.Fatalf("ownerOf(%d) = %q, %v; want %q", tt.pid, got, ok, tt.want)
			}
		})
	}
	// A session two services' processes are in is neither's: the orphan,
	// out of every tree, has no owner then.
	second := waitFor(t, func(st procfs.Stat) bool { return st.SID == daemon && st.PPID == daemon && st.Comm == "sleep" })
	if got, ok := ownerOf(orphan, append(svcs, serviceProc{name: "second", pid: second}), os.Getpid()); ok {
		t.Fatalf("orphan in a shared session owned by %q", got)
	}
}
