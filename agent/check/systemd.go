package check

import (
	"context"
	"errors"
	"fmt"
	"os"

	sd "github.com/coreos/go-systemd/v22/dbus"
)

// ErrUnitNotFound is a systemd unit the host does not have (its LoadState is
// not-found): nothing installed it.
var ErrUnitNotFound = errors.New("unit not installed")

// ErrNoSystemd is a host not booted with systemd (sd_booted(3)): it has no
// units at all.
var ErrNoSystemd = errors.New("the host does not run systemd")

type unitProbe struct {
	unit   string
	target string
	conn   *sd.Conn
}

// NewSystemdUnit returns a probe that passes while the unit is active (or
// reloading, as systemctl is-active counts it), asking systemd over D-Bus.
// It keeps its connection between probes; Close releases it.
func NewSystemdUnit(unit string) Probe {
	return &unitProbe{unit: unit, target: "systemd " + unit}
}

func (p *unitProbe) Probe(ctx context.Context) error {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return fail(p.target, ErrNoSystemd)
	}
	if p.conn == nil {
		conn, err := sd.NewSystemConnectionContext(ctx)
		if err != nil {
			return fail(p.target, err)
		}
		p.conn = conn
	}
	props, err := p.conn.GetUnitPropertiesContext(ctx, p.unit)
	if err != nil {
		// The bus may have gone (systemd re-executed): dial again next time.
		p.Close()
		return fail(p.target, err)
	}
	load, _ := props["LoadState"].(string)
	active, _ := props["ActiveState"].(string)
	switch {
	case load == "not-found":
		return fail(p.target, ErrUnitNotFound)
	case active == "active" || active == "reloading":
		return nil
	}
	return fail(p.target, fmt.Errorf("%s (%s)", active, load))
}

func (p *unitProbe) Close() error {
	if p.conn != nil {
		p.conn.Close()
		p.conn = nil
	}
	return nil
}
