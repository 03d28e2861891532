// Package runtime is the boundary between the supervisor and whatever runs a
// service's process: child processes of the agent (package exec) or, on
// systemd hosts, units.
package runtime

import (
	"context"
	"time"

	"github.com/dhvisor/dhvisor/agent/procfs"
)

// Spec is what a runtime needs to start one service.
type Spec struct {
	Name    string
	Owner   string // the agent the process belongs to (its state directory)
	Command []string
	Env     map[string]string
	Dir     string
	User    string // empty: the agent's own user
	Group   string // empty: the user's primary group
	LogDir  string // stdout and stderr go to LogDir/<Name>.stdout.log
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

// Runtime starts and re-adopts processes.
type Runtime interface {
	Start(ctx context.Context, spec Spec) (Process, error)
	// Adopt takes over a process started by an earlier agent. It fails if
	// that exact process (pid and start time) is no longer alive.
	Adopt(id procfs.Identity) (Process, error)
	// Find looks for a running process of the named service, started by
	// this owner, that the agent has no record of (its state file was lost
	// or is stale), so that a service is never started twice. Processes of
	// other agents on the host (tests, benchmarks) are never matched.
	Find(owner, name string) (procfs.Identity, bool)
}
