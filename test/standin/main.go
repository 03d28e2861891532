// Command standin is a TEST FIXTURE, not part of dhvisor. It plays one of
// Deephaven's JVM services, which cannot be installed here, so that tests,
// the demo and the benchmarks (dhvisor's and monit's alike) have a real
// process to supervise.
//
// It serves plain HTTP on each --port: GET /health answers "ok NAME" (or
// 503), GET /ready answers as Envoy's admin /ready does ("LIVE", or 503
// when unhealthy), GET /file?path=P the SHA-256 of a file as the process
// sees it, GET / answers JSON naming the process and the port that answered,
// and POST /fault/<kind>[?arg=ARG] injects a fault at runtime. Faults can
// also be set by flag or by DH_STANDIN_FAULT=kind[:arg][;kind[:arg]...]:
//
//	crash[:CODE|KILL][,DELAY]  exit with CODE (default 1), or SIGKILL itself
//	exit-at-start[:CODE]       exit before listening (flag/env only)
//	start-delay:DURATION       wait before listening (flag/env only)
//	hang                       accept connections, never answer, ignore SIGTERM
//	unhealthy                  /health answers 503
//	healthy                    undo unhealthy, stop grow and free its memory,
//	                           cancel a pending crash
//	grow:RATE[,MAX]            allocate and touch memory, e.g. 20MiB/s,200MiB
//
// With --grpc every port also answers gRPC over HTTP/2 without TLS: any
// method of any service gets an empty message, with response headers
// x-standin (the --name), x-standin-port, x-standin-method, so a test can
// prove where a call routed through Envoy arrived; grpc.health.v1 tells the
// stand-in's health. --worker NAME --listen HOST:PORT plays a query worker
// a dispatcher started: the same, plus x-standin-worker: NAME. With
// --register-socket PATH it plays a dispatcher's hook: it registers
// --register-workers fake workers at its first port on the agent's workers
// socket, as --register-as (default $DHVISOR_SERVICE), every 10 s.
//
// SIGTERM or SIGINT closes the ports and exits 0, after --term-delay, unless
// the process hangs. It is built to start in milliseconds, because the
// benchmarks spawn it many times.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"time"
)

// readyFDEnv tells a daemonized child which inherited fd to report
// readiness on; its presence is also what marks the process as the child.
const readyFDEnv = "DH_STANDIN_READY_FD"

// launchedFD is readyFDEnv's value in a child that reports to nobody
// (--launcher's): its parent did not wait.
const launchedFD = "none"

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	started := time.Now()
	readyFD := os.Getenv(readyFDEnv)
	// Nothing the service runs should believe it is a daemon child too.
	os.Unsetenv(readyFDEnv)

	cfg, err := parseConfig(args, os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "standin: %v\n", err)
		return 2
	}

	var out io.Writer = os.Stderr
	if cfg.logFile != "" {
		f, err := os.OpenFile(cfg.logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "standin: %v\n", err)
			return 2
		}
		defer f.Close()
		out = f
	}
	// The prefix makes every line say which service and process wrote it,
	// since several stand-ins often share one log.
	lg := log.New(out, fmt.Sprintf("standin %s pid %d ", cfg.name, os.Getpid()), log.Lmsgprefix)

	switch {
	case cfg.daemonize && readyFD == "":
		return daemonize(cfg, lg, args)
	case cfg.launcher && readyFD == "":
		return launch(cfg, lg, args)
	}
	return newService(cfg, lg, started, readyFD).run()
}
