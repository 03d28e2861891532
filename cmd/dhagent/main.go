// Command dhagent is the dhvisor node agent.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/dhvisor/dhvisor/agent"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/logging"
	"github.com/dhvisor/dhvisor/internal/version"
)

func main() {
	cfg := flag.String("config", config.DefaultAgentPath, "agent configuration file")
	showVersion := flag.Bool("version", false, "print the version and exit")
	level := flag.String("log-level", "info", "log level: debug, info, warn, error")
	flag.Parse()
	// The agent waits on events (exits, probes, gossip) and does little
	// work each time. With one P the Go scheduler stops spinning idle Ps on
	// every wake-up, which roughly halved idle CPU with 15 services checked
	// every second (make bench, footprint). GOMAXPROCS in the environment
	// still wins.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	if *showVersion {
		fmt.Println("dhagent", version.Version)
		return
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "dhagent: --log-level %q: expected debug, info, warn or error\n", *level)
		os.Exit(2)
	}
	log := logging.New("dhagent", lv)

	a, err := agent.New(*cfg, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dhagent: configuration refused:\n%v\n", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_, _ = a.Reload(ctx)
			}
		}
	}()
	if err := a.Run(ctx); err != nil {
		log.Error("agent failed", "err", err)
		os.Exit(1)
	}
}
