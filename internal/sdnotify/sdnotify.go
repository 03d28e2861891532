// Package sdnotify tells systemd how a Type=notify daemon is doing: ready
// once it really serves, stopping, and alive, the last only while a probe of
// the daemon's own work succeeds, so that a daemon whose main loop is stuck
// is killed by systemd's watchdog and restarted. Outside systemd every call
// does nothing.
package sdnotify

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Ready tells systemd the daemon serves (READY=1).
func Ready() { _, _ = daemon.SdNotify(false, daemon.SdNotifyReady) }

// Stopping tells systemd the daemon is shutting down (STOPPING=1).
func Stopping() { _, _ = daemon.SdNotify(false, daemon.SdNotifyStopping) }

// Status sets the one-line status systemctl status shows (STATUS=...).
func Status(line string) { _, _ = daemon.SdNotify(false, "STATUS="+line) }

// Watchdog pings systemd's watchdog until ctx ends, each time probe
// succeeds within a third of the watchdog interval, three times an
// interval. A probe that fails or hangs sends nothing: after WatchdogSec
// without a ping systemd kills the daemon (and Restart=always brings it
// back). Without a watchdog (WATCHDOG_USEC unset) it returns at once.
func Watchdog(ctx context.Context, log *slog.Logger, probe func(context.Context) error) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog settings unreadable; not pinging", "err", err)
		return
	}
	if interval <= 0 {
		return
	}
	run(ctx, log, interval/3, probe, func() { _, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog) })
}

func run(ctx context.Context, log *slog.Logger, every time.Duration, probe func(context.Context) error, ping func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		pctx, cancel := context.WithTimeout(ctx, every)
		err := probe(pctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			ping()
			if failing {
				log.Info("watchdog probe succeeds again")
			}
			failing = false
		case !failing:
			log.Error("watchdog probe failed; no longer telling systemd this daemon is alive", "err", err)
			failing = true
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
