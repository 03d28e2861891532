package packaging

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// settings reads a unit's [Service] assignments, every value of a key in
// order (a key set twice, or set empty to reset, counts as written).
func settings(t *testing.T, path string) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	section := ""
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = line
		case section == "[Service]":
			k, v, _ := strings.Cut(line, "=")
			out[k] = append(out[k], v)
		}
	}
	return out
}

// TestCoordinatorUnitIsUnprivileged: dhcoord runs as its own system user
// in a sandbox (issue 16, scope 8). The package test runs it so.
func TestCoordinatorUnitIsUnprivileged(t *testing.T) {
	s := settings(t, "systemd/dhcoord.service")
	for k, want := range map[string]string{
		"User": "dhvisor", "Group": "dhvisor", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
		"ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
		"StateDirectory": "dhvisor/coordinator", "ReadWritePaths": "/var/lib/dhvisor/coordinator",
	} {
		if got := s[k]; !slices.Equal(got, []string{want}) {
			t.Errorf("dhcoord.service: %s=%q, want %q", k, got, want)
		}
	}
	post, err := os.ReadFile("scripts/postinstall.sh")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(post), "useradd --system") {
		t.Error("postinstall.sh does not create the dhvisor system user")
	}
}

// TestAgentUnitKeepsItsChildrenWorking: the options the exec runtime's
// services would inherit and break under stay off; the agent's parent
// directory lets dhcoord through to its own.
func TestAgentUnitKeepsItsChildrenWorking(t *testing.T) {
	s := settings(t, "systemd/dhagent.service")
	for _, k := range []string{"User", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "MemoryDenyWriteExecute", "UMask", "ProtectHostname"} {
		if v, ok := s[k]; ok {
			t.Errorf("dhagent.service sets %s=%q: its services inherit it", k, v)
		}
	}
	for k, want := range map[string]string{"ProtectKernelModules": "yes", "LockPersonality": "yes", "SystemCallArchitectures": "native", "StateDirectoryMode": "0711", "KillMode": "process"} {
		if got := s[k]; !slices.Equal(got, []string{want}) {
			t.Errorf("dhagent.service: %s=%q, want %q", k, got, want)
		}
	}
}
