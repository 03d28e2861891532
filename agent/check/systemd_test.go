package check

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/test/sysdbox"
)

// insideSystemd marks the test run inside the systemd container.
const insideSystemd = "DHV_CHECK_INSIDE_SYSTEMD"

// TestSystemdUnitProbe asks a real systemd (a container whose PID 1 it is)
// about an active unit, one stopped, and one that does not exist.
func TestSystemdUnitProbe(t *testing.T) {
	if os.Getenv(insideSystemd) == "" {
		if _, err := os.Stat("/run/systemd/system"); err != nil {
			// This host is not booted with systemd: the probe says so.
			p := NewSystemdUnit("dh-etcd.service")
			if err := p.Probe(context.Background()); !errors.Is(err, ErrNoSystemd) {
				t.Errorf("probe on a host without systemd: %v, want ErrNoSystemd", err)
			}
		}
		sysdbox.Start(t).RunInside("TestSystemdUnitProbe", insideSystemd+"=1")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// An installed unit (a transient one would be gone once stopped).
	unit := "[Unit]\nDescription=stands for etcd\n[Service]\nExecStart=/bin/sleep 300\n"
	if err := os.WriteFile("/etc/systemd/system/dhv-probe-etcd.service", []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	run("systemctl", "daemon-reload")
	run("systemctl", "start", "dhv-probe-etcd.service")
	p := NewSystemdUnit("dhv-probe-etcd.service")
	defer Close(p)
	if err := p.Probe(ctx); err != nil {
		t.Fatalf("active unit: %v", err)
	}
	run("systemctl", "stop", "dhv-probe-etcd.service")
	err := p.Probe(ctx)
	if err == nil || errors.Is(err, ErrUnitNotFound) || err.Error() != "systemd dhv-probe-etcd.service: inactive (loaded)" {
		t.Fatalf("stopped unit: %v, want a failure naming the unit and its state", err)
	}
	t.Logf("stopped unit: %v", err)
	absent := NewSystemdUnit("dhv-absent.service")
	defer Close(absent)
	if err := absent.Probe(ctx); !errors.Is(err, ErrUnitNotFound) {
		t.Fatalf("absent unit: %v, want ErrUnitNotFound", err)
	}
}
