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

// BootTime returns the system boot time from the btime line of /proc/stat.
// It has one-second resolution, which is all the kernel exposes.
func BootTime() (time.Time, error) {
	// /proc/stat is read whole: its intr line, which comes before btime,
	// can be tens of kilobytes on large machines.
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, err
	}
	return parseBootTime(b)
}

func parseBootTime(b []byte) (time.Time, error) {
	for line := range bytes.Lines(b) {
		rest, ok := bytes.CutPrefix(line, []byte("btime "))
		if !ok {
			continue
		}
		secs, err := strconv.ParseInt(string(bytes.TrimSpace(rest)), 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("procfs: /proc/stat btime: %w", err)
		}
		return time.Unix(secs, 0), nil
	}
	return time.Time{}, fmt.Errorf("procfs: /proc/stat has no btime line")
}
