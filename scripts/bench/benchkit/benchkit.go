// Package benchkit holds what the benchmark harnesses share: nearest-rank
// statistics, their formatting, and bounded polling.
package benchkit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/internal/atomicfile"
)

// Stats summarises samples in milliseconds. Percentiles are nearest-rank:
// each one is a measured sample, never an interpolation (with fewer than
// 100 samples p99 is the maximum).
type Stats struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

func Summarise(v []float64) Stats {
	if len(v) == 0 {
		return Stats{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	rank := func(p float64) float64 {
		i := int(math.Ceil(p/100*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return Stats{N: len(s), P50: rank(50), P90: rank(90), P99: rank(99), Max: s[len(s)-1], Mean: sum / float64(len(s))}
}

func MS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func FmtMS(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.3fs", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0fms", v)
	case v >= 10:
		return fmt.Sprintf("%.1fms", v)
	}
	return fmt.Sprintf("%.2fms", v)
}

func Verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// sleepCtx sleeps for d or until ctx ends.
func SleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// pollUntil calls f every interval until it reports done, ctx ends or
// timeout passes; it returns f's last error with the timeout.
func PollUntil(ctx context.Context, interval, timeout time.Duration, f func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		done, err := f()
		if done {
			return nil
		}
		if err != nil {
			last = err
		}
		if SleepCtx(ctx, interval) != nil {
			if last != nil {
				return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
			}
			return ctx.Err()
		}
	}
}

// RepoRoot finds the dhvisor checkout above the working directory, where
// the harnesses find bin/.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(data), "module github.com/dhvisor/dhvisor\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the dhvisor repository (no go.mod of github.com/dhvisor/dhvisor above the working directory)")
		}
		dir = parent
	}
}

// ReadFile returns a file's content, or "" if it cannot be read.
func ReadFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

// Loadavg is the 1-minute load average, reported beside every result since
// other work on the host is noise.
func Loadavg() string {
	if f := strings.Fields(ReadFile("/proc/loadavg")); len(f) > 0 {
		return f[0]
	}
	return ""
}

// Tail returns the last n lines of file, indented, for error messages.
func Tail(file string, n int) string {
	lines := strings.Split(strings.TrimRight(ReadFile(file), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// WriteJSON writes v as indented JSON, atomically.
func WriteJSON(file string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(file, append(data, '\n'), 0o644)
}

// ProcessAge is how long ago pid started (10 ms resolution).
func ProcessAge(pid int) (time.Duration, error) {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return 0, err
	}
	started, err := st.StartTime()
	if err != nil {
		return 0, err
	}
	return time.Since(started), nil
}

// KeepOrRemove keeps a run's temporary directory (its configs and logs)
// and returns it for Finish to name, or removes it and returns "".
func KeepOrRemove(tmp string, keep bool) string {
	if keep {
		return tmp
	}
	os.RemoveAll(tmp)
	return ""
}

// Finish ends a harness run: it prints the report, writes the raw results
// to jsonOut (if set), explains runErr, names the directory kept for
// inspection (kept, "" if none) and returns the exit status.
func Finish(ctx context.Context, report func(w io.Writer), res any, jsonOut string, runErr error, kept string) int {
	report(os.Stdout)
	if jsonOut != "" {
		if err := WriteJSON(jsonOut, res); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 1
		}
		fmt.Printf("\nraw numbers: %s\n", jsonOut)
	}
	if runErr != nil {
		if ctx.Err() != nil && errors.Is(runErr, context.Canceled) {
			fmt.Fprintln(os.Stderr, "bench: interrupted; everything it started is stopped")
		} else {
			fmt.Fprintf(os.Stderr, "bench: %v\n", runErr)
		}
		if kept != "" {
			fmt.Fprintf(os.Stderr, "bench: configs and logs kept in %s\n", kept)
		}
		return 1
	}
	if kept != "" {
		fmt.Printf("configs and logs kept in %s\n", kept)
	}
	return 0
}

// ClusterDirs finds the checkout whose bin/ holds the daemons a
// devcluster runs (`make build`) and makes a temporary directory for the
// cluster, named for the harness.
func ClusterDirs(harness string) (root, tmp string, err error) {
	if root, err = RepoRoot(); err != nil {
		return "", "", err
	}
	for _, name := range []string{"dhagent", "dhcoord", "dhctl", "dh-standin"} {
		if _, err := os.Stat(filepath.Join(root, "bin", name)); err != nil {
			return "", "", fmt.Errorf("bin/%s missing: run `make build` first (`make bench` does)", name)
		}
	}
	// Under /tmp whatever TMPDIR says: the agents' socket paths must stay short.
	tmp, err = os.MkdirTemp("/tmp", "dhbench-"+harness+"-")
	return root, tmp, err
}
