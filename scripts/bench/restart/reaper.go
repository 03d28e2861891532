package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Why the harness reaps: a stand-in started by monit daemonizes (monit's
// start program forks it and exits), so the stand-in's parent is gone and
// the kernel reparents it. In this container PID 1 never reaps, so a stand-in
// we SIGKILL would stay a zombie, and monit, which finds processes through
// its pidfile, first sees a zombie rather than a missing process: it logs
// "is a zombie" and restarts a cycle later. dhagent's stand-ins are its own
// children and it reaps them at once. To give both supervisors the same
// world, the harness makes itself a child subreaper: every orphan below it is
// reparented to the harness instead of PID 1, and the harness reaps it as soon
// as SIGCHLD says it died, as a working init would.
//
// Reaping with wait4(-1) would also collect the exit status of the processes
// the harness itself starts (dhagent, monit, dhctl), which os/exec would then
// fail to wait for. So the harness never starts a process with os/exec: it
// starts its children with ForkExec and keeps its own table of them; the one
// reaping loop hands a registered child's status to whoever waits for it,
// and discards the rest (orphans).
type reaper struct {
	// mu is held around ForkExec and the table update, and around each
	// wait4, so a child that dies at once cannot be reaped before it is
	// registered (its status would then be mistaken for an orphan's).
	mu       sync.Mutex
	children map[int]*child
	orphans  int // orphans reaped, for the report
	stop     func()
	done     chan struct{}
}

// child is a process the harness started.
type child struct {
	name   string
	pid    int
	exited chan struct{} // closed once reaped; status is then set
	status unix.WaitStatus
}

func newReaper() (*reaper, error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", err)
	}
	r := &reaper{children: map[int]*child{}, done: make(chan struct{})}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGCHLD)
	quit := make(chan struct{})
	r.stop = func() { signal.Stop(sigc); close(quit); <-r.done }
	go func() {
		defer close(r.done)
		// SIGCHLD is coalesced by the kernel, so each one drains every
		// dead child. The ticker is a backstop only; signals do the work.
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			r.reapAll()
			select {
			case <-sigc:
			case <-tick.C:
			case <-quit:
				r.reapAll()
				return
			}
		}
	}()
	return r, nil
}

func (r *reaper) reapAll() {
	for {
		r.mu.Lock()
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid > 0 {
			if c, ok := r.children[pid]; ok {
				delete(r.children, pid)
				c.status = ws
				close(c.exited)
			} else {
				r.orphans++
			}
		}
		r.mu.Unlock()
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if pid <= 0 {
			return
		}
	}
}

func (r *reaper) orphanCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.orphans
}

// start runs argv with stdout and stderr appended to logFile, in its own
// process group so that a terminal's ctrl-C reaches only the harness, which
// then shuts everything down in order.
func (r *reaper) start(name, logFile string, argv ...string) (*child, error) {
	out, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer null.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := syscall.ForkExec(argv[0], argv, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{null.Fd(), out.Fd(), out.Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	c := &child{name: name, pid: pid, exited: make(chan struct{})}
	r.children[pid] = c
	return c, nil
}

// run starts argv and waits up to timeout for it to exit 0.
func (r *reaper) run(name, logFile string, timeout time.Duration, argv ...string) error {
	c, err := r.start(name, logFile, argv...)
	if err != nil {
		return err
	}
	if !c.wait(timeout) {
		c.kill()
		c.wait(5 * time.Second)
		return fmt.Errorf("%s did not finish within %s (output in %s)", name, timeout, logFile)
	}
	if !c.status.Exited() || c.status.ExitStatus() != 0 {
		return fmt.Errorf("%s failed (%s); output in %s:\n%s", name, describe(c.status), logFile, tail(logFile, 15))
	}
	return nil
}

// wait reports whether the child exited within timeout.
func (c *child) wait(timeout time.Duration) bool {
	select {
	case <-c.exited:
		return true
	case <-time.After(timeout):
		return false
	}
}

func (c *child) running() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

func (c *child) signal(sig syscall.Signal) {
	// Only while unreaped: after that the pid may belong to someone else.
	if c.running() {
		_ = unix.Kill(c.pid, sig)
	}
}

func (c *child) kill() { c.signal(syscall.SIGKILL) }

// terminate sends SIGTERM, then SIGKILL after grace.
func (c *child) terminate(grace time.Duration) {
	c.signal(syscall.SIGTERM)
	if !c.wait(grace) {
		c.kill()
		c.wait(5 * time.Second)
	}
}

func describe(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("exit status %d", ws.ExitStatus())
}

// sweep ends every process still below the harness: the net under the
// orderly shutdowns, so that no run, not even a failed or interrupted one,
// leaves a stand-in holding a port. Because the harness is a subreaper,
// everything it started, however deeply daemonized, is below it. It returns
// what it found, so the report can say that a supervisor left something
// behind.
func sweep() []string {
	var found []string
	seen := map[int]bool{}
	for round := 0; round < 3; round++ {
		procs := descendants(os.Getpid())
		if len(procs) == 0 {
			break
		}
		sig := syscall.SIGTERM
		if round > 0 {
			sig = syscall.SIGKILL
		}
		for _, p := range procs {
			if !seen[p.PID] {
				seen[p.PID] = true
				found = append(found, fmt.Sprintf("%s (pid %d)", p.Comm, p.PID))
			}
			_ = unix.Kill(p.PID, sig)
		}
		// Bounded: two seconds for SIGTERM to work, then SIGKILL.
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) && len(descendants(os.Getpid())) > 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return found
}

// hold stops reaping while f runs, so that f may run processes through
// os/exec (the docker CLI) and wait for them itself. f must not start
// children through the reaper.
func (r *reaper) hold(f func() error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return f()
}
