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
}

type file struct {
	Version  int                `json:"version"`
	Services map[string]Service `json:"services"`
}

const version = 1

// Store reads and writes the state file.
type Store struct {
	path string
	mu   sync.Mutex
}

// New returns a store for path; nothing is read or written yet.
func New(path string) *Store { return &Store{path: path} }

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
	return f.Services, nil
}

// Save replaces the file with services: temp file, fsync, rename, fsync of
// the directory. On failure the previous file stays intact.
func (s *Store) Save(services map[string]Service) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := json.MarshalIndent(file{Version: version, Services: services}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(s.path, data, 0o600)
}
