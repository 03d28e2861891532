// Package runtime is the boundary between the supervisor and whatever runs a
// service's process: child processes of the agent (package exec), a
// container (package container) or, on systemd hosts, transient units
// (package systemd).
package runtime

import (
	"context"
	"errors"
	"io"
	"regexp"
	"sort"
	"time"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/internal/config"
)

// ServiceEnv and OwnerEnv mark every process the agent starts, whatever the
// runtime, with its service name and its agent, so a process can be found
// again even if the agent lost its state file, and never taken for another
// agent's.
const (
	ServiceEnv = config.ServiceEnv
	OwnerEnv   = config.OwnerEnv
)

// Spec is what a runtime needs to start one service.
type Spec struct {
	Name    string
	Owner   string // the agent the process belongs to (its state directory)
	Command []string
	Env     map[string]string
	// EnvFiles are read at each start (ServiceVars), later files winning
	// over earlier ones and over Env.
	EnvFiles []string
	// Credentials are systemd's LoadCredential=, name to file; only the
	// systemd runtime has them.
	Credentials map[string]string
	Dir         string
	User        string // empty: the agent's own user
	Group       string // empty: the user's primary group
	LogDir      string // with config.OutputFile, stdout and stderr go to LogDir/<Name>.log.YYYY-MM-DD
	Output      string // config.OutputFile (also when empty) or config.OutputJournal
	// StopTimeout is how long a stop waits after SIGTERM before SIGKILL;
	// a runtime that stops through someone else (systemd) tells it.
	StopTimeout time.Duration
	// Container is the container the process runs in, for a runtime that
	// runs containers; nil otherwise.
	Container *config.Container
	// Daemon is set for a service that puts itself in the background: it
	// is started through a program and followed through its pidfile.
	Daemon *Daemon
}

// Daemon is how a daemonizing service is run, as monit runs it: its start
// program returns once the service runs in the background, the service
// writes its pidfile (or is found by its command line), and the agent
// follows the pid it names. Command is unused for such a service.
type Daemon struct {
	Start   Program
	Stop    *Program // nil: the process is signalled
	Restart *Program // nil: a restart is a stop, then a start
	Pidfile string   // empty: found by Match
	Match   *regexp.Regexp
	// StartTimeout bounds the time from the start program's launch to a
	// trusted pid in the pidfile.
	StartTimeout time.Duration
}

// Program is a start, stop or restart program: run as User and Group
// (the service's own when empty), killed after Timeout.
type Program struct {
	Command []string
	User    string
	Group   string
	Timeout time.Duration
}

// ErrUnavailable wraps a Start that failed because what runs processes (a
// container engine) cannot be reached. It is not the service failing: the
// supervisor retries without counting it against the restart limit.
var ErrUnavailable = errors.New("runtime unavailable")

// Container names the container a process runs in.
type Container struct {
	ID    string // the engine's id
	Name  string
	Image string // as configured (a tag)
	// StartedAt is when the engine started the container: it may be long
	// before the agent took it over.
	StartedAt time.Time
}

// ShortID is a container id as docker ps shows it.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// NoticeKind is what a runtime tells the supervisor about a running process
// besides its end.
type NoticeKind int

// The notices.
const (
	// Unseen: the runtime lost sight of the process (its engine is
	// down); it is neither known alive nor dead until Seen or Done.
	Unseen NoticeKind = iota + 1
	// Seen: the process is in sight again, still the same one.
	Seen
	// Stale: what the process was started from changed (its image, a
	// mounted file); it must be replaced to take the change.
	Stale
	// Unhealthy: the runtime's own health check failed.
	Unhealthy
)

// Notice is one such event, with a message for the service's status.
type Notice struct {
	Kind    NoticeKind
	Message string
}

// Watched is a Process whose runtime reports more than its end.
type Watched interface {
	// Noticed receives when notices wait to be taken with Notices. It
	// never blocks the runtime: a supervisor busy stopping the process
	// takes them later.
	Noticed() <-chan struct{}
	// Notices returns the waiting notices, oldest first, and forgets them.
	Notices() []Notice
	// Retarget gives the process the spec it would be started from now (a
	// reloaded configuration): a Stale notice follows if that changes it.
	Retarget(spec Spec)
	// Container describes the container the process runs in.
	Container() Container
}

// LogReader is a Runtime that keeps a service's output itself (a container
// engine) rather than in the service's log directory.
type LogReader interface {
	// Logs writes the service's output to w: the last tail lines (all when
	// tail < 0), then, with follow, new output until ctx ends.
	Logs(ctx context.Context, spec Spec, tail int, follow bool, w io.Writer) error
}

// Exit describes how a process ended.
type Exit struct {
	Code   int    // -1 when unknown (the process was adopted, not our child)
	Signal string // set when killed by a signal
	At     time.Time
}

// Process is one running instance of a service.
type Process interface {
	// Identity is the pid and start time: it tells this process apart from a
	// later one that reuses the pid.
	Identity() procfs.Identity
	// Done is closed when the process ends. It is an event, not a poll:
	// restarts happen as soon as the kernel reports the death.
	Done() <-chan struct{}
	// Exit tells how the process ended; valid once Done is closed.
	Exit() Exit
	// Release stops watching the process without touching it: the agent is
	// shutting down and a later agent will adopt it.
	Release()
	// Stop asks the process (and its process group) to end, and kills it
	// after timeout. It returns once the process is gone.
	Stop(ctx context.Context, timeout time.Duration) (Exit, error)
	// Kill sends SIGKILL to the whole process group at once.
	Kill() error
}

// Metered is a Process whose runtime measures what the service uses
// itself (a unit's cgroup); for the others the supervisor sums the
// process tree.
// Restarter is a process with a restart program of its own (monit's
// "restart program"): Restart runs it and returns the process that
// replaced this one. ErrNoRestartProgram means a restart is a stop and a
// start.
type Restarter interface {
	Restart(ctx context.Context) (Process, error)
}

// ErrNoRestartProgram is Restart's answer for a process restarted by a
// stop and a start.
var ErrNoRestartProgram = errors.New("no restart program")

type Metered interface {
	Usage() (procfs.Usage, error)
}

// Runtime starts and re-adopts processes.
type Runtime interface {
	Start(ctx context.Context, spec Spec) (Process, error)
	// Adopt takes over the process an earlier agent started for the
	// service spec describes. It fails if that exact process (pid and
	// start time) is no longer alive.
	Adopt(ctx context.Context, spec Spec, id procfs.Identity) (Process, error)
	// Find looks for a running process of the service spec describes
	// that the agent has no record of (its state file was lost or is
	// stale, or another supervisor started it), so that a service is never
	// started twice: one marked as started by spec.Owner for this service,
	// or the trusted process a daemonizing service's pidfile names.
	// Processes of other agents on the host (tests, benchmarks) are never
	// matched.
	Find(spec Spec) (procfs.Identity, bool)
}

// Environment is a service's environment as the exec runtime gives it:
// BaseEnvironment, then the service's own variables (ServiceVars).
func Environment(spec Spec, home string) ([]string, error) {
	vars, err := ServiceVars(spec)
	if err != nil {
		return nil, err
	}
	env := BaseEnvironment(spec, home)
	for _, v := range vars {
		env = append(env, v.Name+"="+v.Value)
	}
	return env, nil
}

// BaseEnvironment is what every service gets whatever its configuration:
// a minimal base and the agent's marks. None of it is secret, so the
// systemd runtime may put it where every local user can read it (a unit's
// Environment=).
func BaseEnvironment(spec Spec, home string) []string {
	env := map[string]string{
		"PATH":     "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME":     home,
		ServiceEnv: spec.Name,
		OwnerEnv:   spec.Owner,
	}
	if spec.User != "" {
		env["USER"], env["LOGNAME"] = spec.User, spec.User
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// WorkDir is where a service runs: its own directory, else its log
// directory, else /.
func WorkDir(spec Spec) string {
	switch {
	case spec.Dir != "":
		return spec.Dir
	case spec.LogDir != "":
		return spec.LogDir
	}
	return "/"
}

// Escalate is how a stop goes for a runtime that signals itself: term asks
// the process to end; if it has not ended (done) after timeout, kill ends
// it. It returns the exit once done, or ctx's error.
func Escalate(ctx context.Context, done <-chan struct{}, exit func() Exit, timeout time.Duration, term, kill func() error) (Exit, error) {
	if err := term(); err != nil {
		return Exit{}, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return exit(), nil
	case <-ctx.Done():
		return Exit{}, ctx.Err()
	case <-t.C:
	}
	if err := kill(); err != nil {
		return Exit{}, err
	}
	select {
	case <-done:
		return exit(), nil
	case <-ctx.Done():
		return Exit{}, ctx.Err()
	}
}
