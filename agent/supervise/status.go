package supervise

import (
	"time"

	"github.com/dhvisor/dhvisor/agent/runtime"
)

// State is a service's state in monit's words, so runbooks still read right.
type State string

// The states of the design's contract.
const (
	OK            State = "OK"
	Initializing  State = "Initializing"
	NotMonitored  State = "Not monitored"
	DoesNotExist  State = "Does not exist"
	ExecFailed    State = "Execution failed"
	ConnFailed    State = "Connection failed"
	ResourceLimit State = "Resource limit matched"
	Stopped       State = "Stopped"
	Restarting    State = "Restarting"
	Failed        State = "Failed"
	// Waiting is a service the agent is about to start once what it
	// depends on elsewhere is there (a cold boot): monit has no such
	// state, and shows it as Initializing.
	Waiting State = "Waiting"
)

// CheckResult is the latest outcome of one health check.
type CheckResult struct {
	Name     string
	OK       bool
	Message  string
	At       time.Time
	Duration time.Duration
}

// Status is a point-in-time view of one service.
type Status struct {
	Name           string
	State          State
	Since          time.Time
	Message        string
	Monitored      bool
	DesiredRunning bool
	PID            int
	StartedAt      time.Time
	Restarts       int
	CPUPercent     float64
	RSSBytes       uint64
	LastCheck      CheckResult
	LastExit       *runtime.Exit
	User           string
	Ports          []int
	DependsOn      []string // local and cluster-wide, as configured
	LastOpToken    string   // the last operation step that took effect here
	// Container is the container the service runs in (runtime docker),
	// nil for a plain process.
	Container *runtime.Container
}

// Running reports whether the service has a live process.
func (s Status) Running() bool { return s.PID != 0 }
