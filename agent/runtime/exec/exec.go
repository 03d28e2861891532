// Package exec runs services as child processes of the agent, each in its own
// process group so that a signal to the agent (or its death) never reaches
// them and a stop reaches the whole service (a launcher script and its JVM).
package exec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/agent/runtime/daemon"
)

// Runtime is the exec runtime.
type Runtime struct {
	Log *slog.Logger // nil: slog's default
}

var _ runtime.Runtime = Runtime{}

func (r Runtime) logger() *slog.Logger {
	if r.Log == nil {
		return slog.Default()
	}
	return r.Log
}

// Start launches spec's command in a new process group, as spec's user,
// with stdout and stderr appended to LogDir/<name>.log.YYYY-MM-DD (the
// next day's file from local midnight, through a logwriter); a
// daemonizing service through its start program.
func (r Runtime) Start(ctx context.Context, spec runtime.Spec) (runtime.Process, error) {
	if spec.Daemon != nil {
		return r.startDaemon(ctx, spec)
	}
	if len(spec.Command) == 0 {
		return nil, errors.New("no command")
	}
	cred, home, err := runtime.Credential(spec.User, spec.Group)
	if err != nil {
		return nil, err
	}
	// The service's secrets (env_files) go straight into its environment,
	// which only its user and root can read (/proc/<pid>/environ).
	env, err := runtime.Environment(spec, home)
	if err != nil {
		return nil, err
	}
	out, err := runtime.OpenOutput(spec, cred)
	if err != nil {
		return nil, err
	}
	defer out.Close()

	cmd := osexec.Command(spec.Command[0], spec.Command[1:]...)
	cmd.Env = env
	cmd.Dir = runtime.WorkDir(spec)
	cmd.Stdout, cmd.Stderr = out.File, out.File
	// No Pdeathsig: services must outlive an agent that is killed or upgraded.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("exec %s: %w", spec.Command[0], unwrapExec(err))
	}
	pid := cmd.Process.Pid
	// The child stays unreaped (a zombie at worst) until watch() reaps it, so
	// the pid cannot be reused while we read its identity and open its pidfd.
	p, err := watch(pid, true, nil)
	// Reaping is ours from here: os/exec must not wait on it too.
	_ = cmd.Process.Release()
	if err == nil {
		// A service whose output nobody reads would hang once the
		// pipe is full: better not started.
		if err = out.Started(); err != nil {
			p.Release()
		}
	}
	if err != nil {
		_ = unix.Kill(-pid, unix.SIGKILL)
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, 0, nil)
		return nil, err
	}
	return p, nil
}

// Adopt watches a process that an earlier agent started, or, for a
// daemonizing service, the process it found through the pidfile.
func (r Runtime) Adopt(_ context.Context, spec runtime.Spec, id procfs.Identity) (runtime.Process, error) {
	if spec.Daemon != nil {
		return r.adoptDaemon(spec, id)
	}
	p, err := watch(id.PID, false, nil)
	if err != nil {
		return nil, err
	}
	// Checked after the pidfd is open: the pidfd pins this exact process, so
	// a match now cannot be a later process that reused the pid.
	if p.Identity() != id {
		p.Release()
		return nil, fmt.Errorf("pid %d is now a different process", id.PID)
	}
	return p, nil
}

// Find scans /proc for the process group leader carrying the service's
// mark; for a daemonizing service, it is the trusted process its pidfile
// names (or its pattern matches), started by an earlier agent or by monit
// (or anyone, if root wrote the pidfile).
func (Runtime) Find(spec runtime.Spec) (procfs.Identity, bool) {
	if spec.Daemon != nil {
		want, err := wantOf(spec)
		if err != nil {
			return procfs.Identity{}, false
		}
		p, err := daemon.Locate(spec.Daemon.Pidfile, want)
		return p.ID, err == nil
	}
	// The marks are environment variables, which anyone can set: they
	// only pick among processes that could be the agent's own start,
	// those of the service's user (the agent's for a service without
	// one) in the agent's own cgroup (dhagent.service's, which an exec
	// service stays in across agent restarts; a user's session is not).
	uid := uint32(os.Geteuid())
	if cred, _, err := runtime.Credential(spec.User, spec.Group); err != nil {
		return procfs.Identity{}, false
	} else if cred != nil {
		uid = cred.Uid
	}
	ownCgroup, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return procfs.Identity{}, false
	}
	want, wantOwner := runtime.ServiceEnv+"="+spec.Name, runtime.OwnerEnv+"="+spec.Owner
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return procfs.Identity{}, false
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := procfs.ReadStat(pid)
		if err != nil || st.PGID != pid || st.State == 'Z' {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !hasEnv(env, want) || !hasEnv(env, wantOwner) {
			continue
		}
		if owner, err := procfs.ReadOwner(pid); err != nil || owner.UID != uid || owner.EUID != uid {
			continue
		}
		if cg, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup")); err != nil || !bytes.Equal(cg, ownCgroup) {
			continue
		}
		// Read again: the pid must still be the process whose marks,
		// owner and cgroup were read.
		if now, err := procfs.IdentityOf(pid); err != nil || now.StartTicks != st.StartTicks {
			continue
		}
		return procfs.Identity{PID: pid, StartTicks: st.StartTicks}, true
	}
	return procfs.Identity{}, false
}

func hasEnv(environ []byte, kv string) bool {
	for len(environ) > 0 {
		i := 0
		for i < len(environ) && environ[i] != 0 {
			i++
		}
		if string(environ[:i]) == kv {
			return true
		}
		if i == len(environ) {
			break
		}
		environ = environ[i+1:]
	}
	return false
}

func unwrapExec(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// process watches one process through a pidfd, which becomes readable when
// the process exits whether or not it is our child.
type process struct {
	id    procfs.Identity
	pgid  int
	child bool
	pidfd int

	wake     *os.File // written to stop the watcher (Release)
	done     chan struct{}
	released chan struct{}
	once     sync.Once
	exit     runtime.Exit
	// daemon is set for a daemonizing service's process, which is neither
	// the agent's child nor necessarily a group leader.
	daemon *daemonControl
}

func watch(pid int, child bool, dc *daemonControl) (*process, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	st, err := procfs.ReadStat(pid)
	if err != nil {
		unix.Close(pidfd)
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		unix.Close(pidfd)
		return nil, err
	}
	p := &process{
		id:       procfs.Identity{PID: pid, StartTicks: st.StartTicks},
		pgid:     st.PGID,
		child:    child,
		pidfd:    pidfd,
		wake:     w,
		done:     make(chan struct{}),
		released: make(chan struct{}),
		daemon:   dc,
	}
	go p.wait(r)
	return p, nil
}

func (p *process) wait(wake *os.File) {
	defer wake.Close()
	defer unix.Close(p.pidfd)
	fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}, {Fd: int32(wake.Fd()), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if fds[1].Revents != 0 {
			close(p.released)
			return
		}
		if err != nil || fds[0].Revents != 0 {
			break
		}
	}
	p.exit = runtime.Exit{Code: -1, At: time.Now()}
	if p.child {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(p.id.PID, &ws, 0, nil); err == nil {
			switch {
			case ws.Exited():
				p.exit.Code = ws.ExitStatus()
			case ws.Signaled():
				p.exit.Signal = unix.SignalName(ws.Signal())
			}
		}
	}
	// Whatever the main process left behind in its group (a JVM whose
	// launcher died) would hold the ports the next start needs. Not for a
	// daemon: its group may hold processes of other users (a setuid
	// program it ran), which the agent has no business killing.
	if p.daemon == nil && p.pgid == p.id.PID {
		_ = unix.Kill(-p.pgid, unix.SIGKILL)
	}
	close(p.done)
}

func (p *process) Identity() procfs.Identity { return p.id }
func (p *process) Done() <-chan struct{}     { return p.done }
func (p *process) Exit() runtime.Exit        { return p.exit }

func (p *process) Release() {
	p.once.Do(func() {
		_, _ = p.wake.Write([]byte{0})
		select {
		case <-p.done:
		case <-p.released:
		}
		p.wake.Close()
	})
}

// signal sends sig to the process group, or the process alone when it is
// not a group leader (adopted from elsewhere).
func (p *process) signal(sig unix.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	target := p.id.PID
	if p.pgid == p.id.PID {
		target = -p.pgid
	}
	if err := unix.Kill(target, sig); err != nil && err != unix.ESRCH {
		return err
	}
	return nil
}

func (p *process) Kill() error {
	if p.daemon != nil {
		return p.daemon.kill(p)
	}
	return p.signal(unix.SIGKILL)
}

// Restart runs a daemonizing service's restart program.
func (p *process) Restart(ctx context.Context) (runtime.Process, error) {
	if p.daemon == nil {
		return nil, runtime.ErrNoRestartProgram
	}
	return p.daemon.restart(ctx, p)
}

func (p *process) Stop(ctx context.Context, timeout time.Duration) (runtime.Exit, error) {
	if p.daemon != nil {
		return p.daemon.stop(ctx, p, timeout)
	}
	return runtime.Escalate(ctx, p.done, p.Exit, timeout,
		func() error { return p.signal(unix.SIGTERM) },
		func() error { return p.signal(unix.SIGKILL) })
}
