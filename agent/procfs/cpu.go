package procfs

import "time"

// CPUMeter turns successive cumulative Usage samples of one process tree
// into CPU utilisation. The zero value is ready to use.
type CPUMeter struct {
	lastTicks uint64
	lastAt    time.Time
	primed    bool
}

// Observe records a sample taken at time at and returns the CPU use since
// the previous sample in percent, where 100 is one core fully busy.
//
// ok is false when there is no valid interval: on the first sample, when
// time did not advance, or when the tick count went backwards (a process
// left the tree, or the caller forgot Reset after a restart). In each case
// the sample becomes the new baseline, so the next call reports again.
func (m *CPUMeter) Observe(u Usage, at time.Time) (percent float64, ok bool) {
	prevTicks, prevAt, primed := m.lastTicks, m.lastAt, m.primed
	m.lastTicks, m.lastAt, m.primed = u.CPUTicks, at, true
	if !primed || u.CPUTicks < prevTicks {
		return 0, false
	}
	elapsed := at.Sub(prevAt)
	if elapsed <= 0 {
		return 0, false
	}
	busy := float64(u.CPUTicks-prevTicks) / ClockTicks
	return 100 * busy / elapsed.Seconds(), true
}

// Reset forgets the baseline. Call it whenever the measured tree is
// replaced, e.g. after a restart, because the new process's ticks start
// from zero and its first interval would otherwise mix two processes.
func (m *CPUMeter) Reset() {
	*m = CPUMeter{}
}
