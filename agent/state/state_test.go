package state

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	s := New(filepath.Join(dir, "sub", "state.json"))
	got, err := s.Load()
	if err != nil || len(got) != 0 {
		t.Fatalf("missing file: %v %v", got, err)
	}
	want := map[string]Service{"a": {DesiredRunning: true, Monitored: true, PID: 42, StartTicks: 7, Restarts: 3, StartedAt: time.Unix(100, 0).UTC(), LastOpToken: "op-7/step-2"}}
	if err := s.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err = s.Load()
	if err != nil || got["a"].PID != 42 || got["a"].Restarts != 3 || got["a"].LastOpToken != "op-7/step-2" || !got["a"].StartedAt.Equal(want["a"].StartedAt) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(s.Path()))
	if len(ents) != 1 {
		t.Fatalf("temp files left behind: %v", ents)
	}
}

func TestCorruptFileMovedAside(t *testing.T) {
	for name, body := range map[string]string{"truncated json": `{"version":1,"servi`, "future version": `{"version":9,"services":{}}`} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "state.json")
			if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := New(p).Load()
			if err == nil || !strings.Contains(err.Error(), "moved to") || len(got) != 0 {
				t.Fatalf("Load = %v, %v; want empty state and an error", got, err)
			}
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Fatal("corrupt file still in place")
			}
		})
	}
}

func TestRebooted(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.json")
	tests := []struct {
		name         string
		written, now string
		want         bool
	}{
		{"same boot", "boot-1", "boot-1", false},
		{"another boot", "boot-1", "boot-2", true},
		{"file from before boot ids", "", "boot-2", false},
		{"boot id unreadable now", "boot-1", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := NewForBoot(p, tt.written).Save(map[string]Service{"a": {}}); err != nil {
				t.Fatal(err)
			}
			s := NewForBoot(p, tt.now)
			if _, err := s.Load(); err != nil {
				t.Fatal(err)
			}
			if got := s.Rebooted(); got != tt.want {
				t.Fatalf("Rebooted() = %v, want %v", got, tt.want)
			}
		})
	}
	if b, _ := os.ReadFile(bootIDFile); len(strings.TrimSpace(string(b))) == 0 {
		t.Fatalf("%s unreadable: the agent could not tell a reboot", bootIDFile)
	}
}
