// Package state keeps what the agent must remember across its own restarts
// (which process is which service, what the operator asked for, restart
// counters, the last operation step applied) in one file, replaced atomically so a crash or a full disk never
// leaves a torn file behind.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/dhvisor/dhvisor/internal/atomicfile"
)

// Service is the remembered state of one service.
type Service struct {
	DesiredRunning bool   `json:"desired_running"`
	Monitored      bool   `json:"monitored"`
	Failed         bool   `json:"failed,omitempty"`
	FailedReason   string `json:"failed_reason,omitempty"`
	PID            int    `json:"pid,omitempty"`
	// Runtime is the runtime that runs PID (exec when empty, as in files
	// from before there were several): an agent adopts a process through
	// the runtime that started it.
	Runtime        string      `json:"runtime,omitempty"`
	StartTicks     uint64      `json:"start_ticks,omitempty"`
	StartedAt      time.Time   `json:"started_at,omitzero"`
	Restarts       int         `json:"restarts"`
	RecentRestarts []time.Time `json:"recent_restarts,omitempty"`
	FastFailures   int         `json:"fast_failures,omitempty"`
	// LastOpToken is the op_token of the last operation step that took
	// effect on the service: a coordinator leader that died mid-step is
	// replaced, and the new one re-sends the step, which must not act twice.
	LastOpToken string `json:"last_op_token,omitempty"`
	// LogsSeen names the log checks whose line the process PID has
	// written: Deephaven's logger moves to a new file every 15 minutes, so
	// an agent restarted later would not find the line again.
	LogsSeen []string `json:"logs_seen,omitempty"`
}

type file struct {
	Version int `json:"version"`
	// BootID is the kernel's boot id when the file was written: a file
	// from an earlier boot means the host rebooted since (monit's
	// "onreboot" applies).
	BootID   string             `json:"boot_id,omitempty"`
	Services map[string]Service `json:"services"`
}

const version = 1

// Store reads and writes the state file.
type Store struct {
	path     string
	boot     string // this boot's id, written with every save
	mu       sync.Mutex
	rebooted bool
}

// bootIDFile names the current boot; it changes with every boot.
const bootIDFile = "/proc/sys/kernel/random/boot_id"

// New returns a store for path; nothing is read or written yet.
func New(path string) *Store {
	b, _ := os.ReadFile(bootIDFile)
	return NewForBoot(path, strings.TrimSpace(string(b)))
}

// NewForBoot is New on a host whose current boot is boot.
func NewForBoot(path, boot string) *Store { return &Store{path: path, boot: boot} }

// Rebooted reports whether the file Load read was written in an earlier
// boot of the host. A file without a boot id cannot tell: not rebooted.
func (s *Store) Rebooted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rebooted
}

// Path is the state file's path.
func (s *Store) Path() string { return s.path }

// Load returns the saved services. A missing file is an empty state. An
// unreadable one is moved aside (kept for inspection) and reported, and the
// agent falls back on finding its processes by their marks.
func (s *Store) Load() (map[string]Service, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]Service{}, nil
	}
	if err != nil {
		return map[string]Service{}, err
	}
	var f file
	if err := json.Unmarshal(data, &f); err != nil || f.Version != version {
		aside := s.path + ".corrupt-" + time.Now().UTC().Format("20060102T150405")
		_ = os.Rename(s.path, aside)
		if err == nil {
			err = fmt.Errorf("version %d, expected %d", f.Version, version)
		}
		return map[string]Service{}, fmt.Errorf("state file %s unreadable (moved to %s): %v", s.path, aside, err)
	}
	if f.Services == nil {
		f.Services = map[string]Service{}
	}
	s.rebooted = f.BootID != "" && s.boot != "" && f.BootID != s.boot
	return f.Services, nil
}

// Save replaces the file with services: temp file, fsync, rename, fsync of
// the directory. On failure the previous file stays intact.
func (s *Store) Save(services map[string]Service) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := json.MarshalIndent(file{Version: version, BootID: s.boot, Services: services}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(s.path, data, 0o600)
}
