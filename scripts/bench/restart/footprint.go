package main

import (
	"github.com/dhvisor/dhvisor/agent/procfs"

	"context"
	"fmt"
	"strings"
	"time"
)

// footprint is a supervisor's own cost while its services are healthy.
type footprint struct {
	Services    int     `json:"services"`
	PID         int     `json:"pid"`
	RSSBytes    uint64  `json:"rss_bytes"`     // VmRSS at the end of the window
	MaxRSSBytes uint64  `json:"max_rss_bytes"` // largest VmRSS sampled in the window (each second)
	HWMBytes    uint64  `json:"hwm_bytes"`     // VmHWM: peak RSS over the whole life, startup included
	CPUTicks    uint64  `json:"cpu_ticks"`     // utime+stime over the window, in 1/100 s
	WindowS     float64 `json:"window_s"`
	CPUPercent  float64 `json:"cpu_percent"` // of one core
	// Restarts during the window: non-zero means it was not idle and the
	// numbers are suspect.
	RestartsInWindow int `json:"restarts_in_window"`
}

// measureIdle waits settle, then reads the supervisor's utime+stime and RSS
// from /proc across an idle window. Only the supervisor's own process
// counts, not its services (their cost is the same under both).
func measureIdle(ctx context.Context, sup supervisor, targets []target, settle, idle time.Duration, fp *footprint) error {
	fp.PID = sup.pid()
	if err := sleepCtx(ctx, settle); err != nil {
		return err
	}
	before, err := pids(ctx, sup, targets)
	if err != nil {
		return err
	}
	st0, err := procfs.ReadStat(fp.PID)
	if err != nil {
		return err
	}
	t0 := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	end := time.NewTimer(idle)
	defer end.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		case <-end.C:
			done = true
		}
		rss, _, err := memStatus(fp.PID)
		if err != nil {
			return fmt.Errorf("supervisor pid %d: %w", fp.PID, err)
		}
		fp.MaxRSSBytes = max(fp.MaxRSSBytes, rss)
	}
	st1, err := procfs.ReadStat(fp.PID)
	if err != nil {
		return err
	}
	elapsed := time.Since(t0)
	if fp.RSSBytes, fp.HWMBytes, err = memStatus(fp.PID); err != nil {
		return err
	}
	fp.CPUTicks = (st1.UTime + st1.STime) - (st0.UTime + st0.STime)
	fp.WindowS = elapsed.Seconds()
	fp.CPUPercent = float64(fp.CPUTicks) / procfs.ClockTicks / elapsed.Seconds() * 100
	after, err := pids(ctx, sup, targets)
	if err != nil {
		return err
	}
	var changed []string
	for name, pid := range before {
		if after[name] != pid {
			fp.RestartsInWindow++
			changed = append(changed, name)
		}
	}
	if len(changed) > 0 {
		return fmt.Errorf("not idle: %s restarted during the window", strings.Join(changed, ", "))
	}
	return nil
}

func pids(ctx context.Context, sup supervisor, targets []target) (map[string]int, error) {
	out := map[string]int{}
	for _, t := range targets {
		st, err := sup.status(ctx, t.name)
		if err != nil {
			return nil, err
		}
		if !st.ok {
			return nil, fmt.Errorf("%s is not OK before/after the idle window", t.name)
		}
		out[t.name] = st.pid
	}
	return out, nil
}
