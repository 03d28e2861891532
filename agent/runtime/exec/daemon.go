package exec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	osexec "os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/agent/runtime/daemon"
)

// startDaemon runs a daemonizing service the way monit does: its start
// program, then the process its pidfile names (or its pattern matches),
// followed through a pidfd like a child of the agent's own.
func (r Runtime) startDaemon(ctx context.Context, spec runtime.Spec) (runtime.Process, error) {
	d := spec.Daemon
	want, err := wantOf(spec)
	if err != nil {
		return nil, err
	}
	note, err := daemon.Prepare(spec, want)
	if err != nil {
		return nil, err
	}
	if note != "" {
		r.logger().Info("removed a stale pidfile before the start", "service", spec.Name, "why", note)
	}
	launched, err := runProgram(ctx, spec, d.Start, "start program")
	if err != nil {
		return nil, err
	}
	want.After = launched
	p, err := waitForPid(ctx, spec, want, d.StartTimeout)
	if err != nil {
		return nil, err
	}
	return followDaemon(r.logger(), p, spec, want)
}

// wantOf is what a process its pidfile names (or its pattern matches)
// must be to be spec's: its user's, and in the agent's control group,
// where the agent's start programs leave it (or monit's, on a take-over).
// Only an identity the agent recorded itself is adopted from elsewhere.
func wantOf(spec runtime.Spec) (daemon.Want, error) {
	want, err := daemon.WantOf(spec)
	if err != nil {
		return daemon.Want{}, err
	}
	own, err := daemon.OwnCgroup()
	if err != nil {
		return daemon.Want{}, fmt.Errorf("the agent's control group: %w", err)
	}
	want.Cgroups = []string{own}
	return want, nil
}

// followDaemon watches p, the service's trusted process.
func followDaemon(log *slog.Logger, p daemon.Proc, spec runtime.Spec, want daemon.Want) (*process, error) {
	w, err := watch(p.ID.PID, false, &daemonControl{log: log, spec: spec, proc: p, uid: want.UID})
	if err != nil {
		return nil, err
	}
	// The pidfd pins the process: the same identity now is the process
	// that was judged, not a later one under its pid.
	if w.Identity() != p.ID {
		w.Release()
		return nil, fmt.Errorf("pid %d ended before it could be followed", p.ID.PID)
	}
	return w, nil
}

// daemonControl is how a daemonizing service's process is stopped: it is
// not the agent's child, nor necessarily a group leader.
type daemonControl struct {
	log  *slog.Logger
	spec runtime.Spec
	proc daemon.Proc
	uid  uint32
}

// stop runs the stop program, then signals what is left: the process and
// the members of the session or group it leads that run as its user,
// SIGTERM first, SIGKILL after timeout. Done only when the pid is gone.
func (c *daemonControl) stop(ctx context.Context, p *process, timeout time.Duration) (runtime.Exit, error) {
	members := daemon.Members(c.proc, c.uid)
	if prog := c.spec.Daemon.Stop; prog != nil {
		if _, err := runProgram(ctx, c.spec, *prog, "stop program"); err != nil {
			// As monit: a failed stop program does not leave the
			// service running; the signals below end it.
			c.log.Warn("stop program failed; signalling the process", "service", c.spec.Name, "err", err)
		}
		select {
		case <-p.done:
			signalAll(members, unix.SIGKILL) // helpers that outlived it
			return p.exit, nil
		default:
		}
	}
	sig := func(s unix.Signal) func() error {
		return func() error {
			signalAll(members, s)
			return daemon.Signal(p.id, s)
		}
	}
	exit, err := runtime.Escalate(ctx, p.done, p.Exit, timeout, sig(unix.SIGTERM), sig(unix.SIGKILL))
	if err == nil {
		signalAll(members, unix.SIGKILL)
	}
	return exit, err
}

// restart runs the restart program, which must end the process and leave
// a new one in the pidfile, trusted as a start's would be.
func (c *daemonControl) restart(ctx context.Context, p *process) (runtime.Process, error) {
	prog := c.spec.Daemon.Restart
	if prog == nil {
		return nil, runtime.ErrNoRestartProgram
	}
	want, err := wantOf(c.spec)
	if err != nil {
		return nil, err
	}
	launched, err := runProgram(ctx, c.spec, *prog, "restart program")
	if err != nil {
		return nil, err
	}
	// The old process may still be on its way out when the program
	// returns; a new one in the pidfile is only trusted once it is gone.
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(c.spec.StopTimeout):
		return nil, fmt.Errorf("the restart program returned, but pid %d still runs after %s", p.id.PID, c.spec.StopTimeout)
	}
	want.After = launched
	np, err := waitForPid(ctx, c.spec, want, c.spec.Daemon.StartTimeout)
	if err != nil {
		return nil, err
	}
	return followDaemon(c.log, np, c.spec, want)
}

func signalAll(ps []daemon.Proc, sig unix.Signal) {
	for _, m := range ps {
		_ = daemon.Signal(m.ID, sig)
	}
}

// kill ends the process and its members at once.
func (c *daemonControl) kill(p *process) error {
	signalAll(daemon.Members(c.proc, c.uid), unix.SIGKILL)
	return daemon.Signal(p.id, unix.SIGKILL)
}

// waitForPid polls for the service's pidfile (or a process its pattern
// matches) until it names a process the agent trusts, for up to timeout.
// Polling starts fast, because a service that daemonizes quickly should
// be followed as quickly as a child, and backs off to 50 ms.
func waitForPid(ctx context.Context, spec runtime.Spec, want daemon.Want, timeout time.Duration) (daemon.Proc, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	wait := time.Millisecond
	for {
		p, err := daemon.Locate(spec.Daemon.Pidfile, want)
		if err == nil {
			return p, nil
		}
		select {
		case <-ctx.Done():
			return daemon.Proc{}, ctx.Err()
		case <-deadline.C:
			what := "pidfile " + spec.Daemon.Pidfile
			if spec.Daemon.Pidfile == "" {
				what = "a process matching " + spec.Daemon.Match.String()
			}
			return daemon.Proc{}, fmt.Errorf("the start program returned, but %s named no process of the service within %s: %v", what, timeout, err)
		case <-time.After(wait):
		}
		wait = min(wait*3/2+time.Millisecond, 50*time.Millisecond)
	}
}

// outputLimit bounds how much of a failing program's output goes into
// the service's status.
const outputLimit = 2048

// runProgram runs one of the service's programs in a process group of its
// own, as its user, with its output appended to the service's log, and
// waits for it within its timeout. It returns the program's start (boot
// ticks): the service's process cannot have started before it.
func runProgram(ctx context.Context, spec runtime.Spec, prog runtime.Program, what string) (uint64, error) {
	if len(prog.Command) == 0 {
		return 0, fmt.Errorf("%s: no command", what)
	}
	userName, groupName := prog.User, prog.Group
	if userName == "" {
		userName, groupName = spec.User, spec.Group
	}
	cred, home, err := runtime.Credential(userName, groupName)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	env, err := runtime.Environment(spec, home)
	if err != nil {
		return 0, err
	}
	out, err := runtime.OpenLog(spec, cred)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	start, _ := out.Seek(0, io.SeekEnd)

	cmd := osexec.Command(prog.Command[0], prog.Command[1:]...)
	cmd.Env = env
	cmd.Dir = runtime.WorkDir(spec)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("%s %s: %w", what, prog.Command[0], unwrapExec(err))
	}
	pid := cmd.Process.Pid
	// Unreaped until Wait below, so the pid is the program's for this read.
	st, err := procfs.ReadStat(pid)
	if err != nil {
		_ = unix.Kill(-pid, unix.SIGKILL)
		_ = cmd.Wait()
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(prog.Timeout)
	defer timer.Stop()
	select {
	case err = <-done:
	case <-timer.C:
		_ = unix.Kill(-pid, unix.SIGKILL)
		<-done
		return 0, fmt.Errorf("%s %s did not return within %s (killed)%s", what, prog.Command[0], prog.Timeout, outputSince(out, start))
	case <-ctx.Done():
		_ = unix.Kill(-pid, unix.SIGKILL)
		<-done
		return 0, ctx.Err()
	}
	var ee *osexec.ExitError
	if errors.As(err, &ee) {
		return 0, fmt.Errorf("%s %s failed (%s)%s", what, prog.Command[0], ee.ProcessState, outputSince(out, start))
	}
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", what, prog.Command[0], err)
	}
	return st.StartTicks, nil
}

// outputSince is what a program wrote to the log from offset on (its
// end, when long), for the status of a failed start. The log is read
// through the descriptor the program wrote to, never by its path, which
// the service's user could have replaced with a link.
func outputSince(f *os.File, offset int64) string {
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil || end <= offset || f.Name() == os.DevNull {
		return ""
	}
	if end-offset > outputLimit {
		offset = end - outputLimit
	}
	r, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return ""
	}
	defer r.Close()
	b := make([]byte, end-offset)
	n, _ := r.ReadAt(b, offset)
	text := strings.TrimSpace(strings.ToValidUTF8(string(b[:n]), "?"))
	if text == "" {
		return ""
	}
	return ": " + text
}

// adoptDaemon follows the process id names if it is still the service's:
// the one an earlier agent followed, or the one Find found.
func (r Runtime) adoptDaemon(spec runtime.Spec, id procfs.Identity) (runtime.Process, error) {
	want, err := daemon.WantOf(spec)
	if err != nil {
		return nil, err
	}
	p, err := daemon.Inspect(id.PID)
	if err != nil {
		return nil, err
	}
	if p.ID != id {
		return nil, fmt.Errorf("pid %d is now a different process", id.PID)
	}
	if err := want.Trust(p); err != nil {
		return nil, err
	}
	return followDaemon(r.logger(), p, spec, want)
}
