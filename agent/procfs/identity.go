package procfs

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Identity names one process for its whole life. A pid alone is not enough:
// once a process is reaped its pid can be handed to an unrelated process,
// which must not be mistaken for (or signalled as) the supervised one. The
// start time cannot repeat for a reused pid, so the pair is unique.
type Identity struct {
	PID        int
	StartTicks uint64
}

// IdentityOf returns the identity of the process currently holding pid.
func IdentityOf(pid int) (Identity, error) {
	s, err := ReadStat(pid)
	if err != nil {
		return Identity{}, err
	}
	return Identity{PID: pid, StartTicks: s.StartTicks}, nil
}

// Alive reports whether the process still runs: its pid exists, has not been
// reused, and is neither a zombie (exited, waiting to be reaped) nor dead.
// Any error reading /proc counts as not alive.
func (id Identity) Alive() bool {
	s, err := ReadStat(id.PID)
	if err != nil {
		return false
	}
	return s.StartTicks == id.StartTicks && s.State != 'Z' && s.State != 'X'
}

// BootTime returns the system boot time as now less /proc/uptime, which
// has the 10 ms resolution of the start ticks it is added to. (/proc/stat's
// btime has whole seconds only, and a process's age computed from it can be
// almost a second off: enough to misjudge a restart policy's min_uptime.)
func BootTime() (time.Time, error) {
	now := time.Now()
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return time.Time{}, err
	}
	up, err := parseUptime(b)
	if err != nil {
		return time.Time{}, err
	}
	return now.Add(-up), nil
}

// parseUptime reads the first field of /proc/uptime ("12345.67 2345.00").
func parseUptime(b []byte) (time.Duration, error) {
	f := bytes.Fields(b)
	if len(f) == 0 {
		return 0, fmt.Errorf("procfs: /proc/uptime is empty")
	}
	secs, err := strconv.ParseFloat(string(f[0]), 64)
	if err != nil || secs < 0 {
		return 0, fmt.Errorf("procfs: /proc/uptime %q: not a number of seconds", f[0])
	}
	return time.Duration(secs * float64(time.Second)), nil
}
