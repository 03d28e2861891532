package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// growTick is fine enough that RSS rises smoothly for a sampler.
	growTick = 50 * time.Millisecond
	// maxGrowChunk bounds one allocation so the lock is never held long;
	// a faster rate just catches up on later ticks.
	maxGrowChunk = 64 << 20
	pageSize     = 4096
)

type service struct {
	cfg       *config
	log       *log.Logger
	pid       int
	started   time.Time
	readyFD   string
	unhealthy atomic.Bool
	hanging   atomic.Bool
	stopping  atomic.Bool

	mu         sync.Mutex
	crashTimer *time.Timer
	holdCrash  bool          // while starting: keep an immediate crash in heldCrash
	heldCrash  *fault        // released once the listening line is out
	growStop   chan struct{} // non-nil while growing
	chunks     [][]byte      // kept reachable so the memory stays resident
	grown      int64

	grpc *grpcIdentity // with --grpc
}

func newService(cfg *config, lg *log.Logger, started time.Time, readyFD string) *service {
	s := &service{cfg: cfg, log: lg, pid: os.Getpid(), started: started, readyFD: readyFD}
	if cfg.grpc {
		s.grpc = newGRPCIdentity(cfg.name, cfg.worker)
	}
	return s
}

func (s *service) run() int {
	// Signals are caught from the very start so that a SIGTERM during a
	// start delay is a clean stop, as it would be for a JVM.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	if s.cfg.launcher {
		// As Deephaven's JVM: a pidfile left behind means another copy may
		// run, and this one does not start.
		if err := createPidfile(s.cfg.pidfile, s.pid); err != nil {
			s.log.Printf("pidfile: %v; not starting", err)
			return 1
		}
	}
	s.record("start")
	s.lifecycle(lifecycleInitializing)
	if s.cfg.pidfile != "" && s.readyFD == "" { // a daemon parent wrote it already
		if err := writePidfile(s.cfg.pidfile, s.pid); err != nil {
			s.log.Printf("pidfile: %v", err)
		}
	}
	if d := s.cfg.startDelay; d > 0 {
		s.log.Printf("fault start-delay: waiting %v before listening", d)
		select {
		case <-time.After(d):
		case sig := <-sigs:
			return s.stop(sig, nil)
		}
	}
	if c := s.cfg.exitAtStart; c >= 0 {
		s.log.Printf("fault exit-at-start: exiting with code %d before listening", c)
		return c
	}

	var lns []net.Listener
	var addrs []string
	for _, p := range s.cfg.ports {
		ln, err := net.Listen("tcp", net.JoinHostPort(s.cfg.addr, strconv.Itoa(p)))
		if err != nil {
			s.log.Printf("cannot listen: %v", err)
			for _, l := range lns {
				l.Close()
			}
			return 1
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	// Start-time faults take effect before the first request is served, so
	// that --hang or --unhealthy never answer normally even once; only an
	// immediate crash waits for the listening line, so that a test or a
	// supervisor sees the process come up before it dies.
	s.mu.Lock()
	s.holdCrash = true
	s.mu.Unlock()
	for _, f := range s.cfg.faults {
		s.apply(f, "start")
	}
	srv := &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          s.log,
	}
	if s.cfg.grpc {
		// gRPC clients and Envoy speak HTTP/2 with prior knowledge on a
		// plaintext port; HTTP/1.1 keeps working beside it.
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
	}
	for _, ln := range lns {
		go srv.Serve(ln)
	}
	if s.grpc != nil {
		s.log.Printf("gRPC on every port: any method answers as %s", s.cfg.name)
	}
	s.log.Printf("listening on %s", addrList(addrs))
	s.lifecycle(lifecycleRunning)
	if s.cfg.registerSocket != "" {
		rctx, stopRegistering := context.WithCancel(context.Background())
		defer stopRegistering()
		go s.register(rctx)
	}
	if s.readyFD != "" && s.readyFD != launchedFD {
		if err := notifyReady(s.readyFD, addrs); err != nil {
			s.log.Printf("daemonize: %v", err)
		}
	}
	s.mu.Lock()
	held := s.heldCrash
	s.holdCrash, s.heldCrash = false, nil
	s.mu.Unlock()
	if held != nil {
		s.crash(*held)
	}

	for sig := range sigs {
		if s.hanging.Load() {
			s.log.Printf("fault hang: ignoring %v", sig)
			continue
		}
		return s.stop(sig, srv)
	}
	return 0 // unreachable: sigs is never closed
}

func (s *service) stop(sig os.Signal, srv *http.Server) int {
	s.log.Printf("received %v, stopping", sig)
	s.stopping.Store(true)
	s.grpc.setHealth(false)
	if d := s.cfg.termDelay; d > 0 {
		s.log.Printf("term-delay: waiting %v before closing", d)
		time.Sleep(d)
	}
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		srv.Shutdown(ctx)
		cancel()
		srv.Close()
	}
	s.record("stop")
	removePidfile(s.cfg.pidfile, s.pid)
	s.log.Printf("exiting 0")
	return 0
}

// record appends one line per event with a single write to an O_APPEND
// file, so processes sharing the file never interleave within a line.
func (s *service) record(event string) {
	if s.cfg.record == "" {
		return
	}
	f, err := os.OpenFile(s.cfg.record, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err == nil {
		line := fmt.Sprintf("%d %s %s %d", time.Now().UnixNano(), event, s.cfg.name, s.pid)
		if s.cfg.release != "" {
			line += " " + s.cfg.release
		}
		_, err = io.WriteString(f, line+"\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		s.log.Printf("record %s: %v", event, err)
	}
}

// apply puts a runtime fault into effect; start-only kinds never get here.
func (s *service) apply(f fault, source string) {
	s.log.Printf("fault %s (from %s)", f, source)
	switch f.kind {
	case kindUnhealthy:
		s.unhealthy.Store(true)
		s.grpc.setHealth(false)
	case kindHealthy:
		s.unhealthy.Store(false)
		s.grpc.setHealth(true)
		s.mu.Lock()
		if s.crashTimer != nil {
			s.crashTimer.Stop()
			s.crashTimer = nil
		}
		s.heldCrash = nil
		s.mu.Unlock()
		s.stopGrow(true)
	case kindHang:
		s.hanging.Store(true)
	case kindCrash:
		s.mu.Lock()
		if s.crashTimer != nil {
			s.crashTimer.Stop()
			s.crashTimer = nil
		}
		now := f.after == 0 && !s.holdCrash
		switch {
		case f.after > 0:
			s.crashTimer = time.AfterFunc(f.after, func() { s.crash(f) })
		case s.holdCrash:
			s.heldCrash = &f
		}
		s.mu.Unlock()
		if now {
			s.crash(f)
		}
	case kindGrow:
		s.startGrow(f.rate, f.max)
	}
}

func (s *service) crash(f fault) {
	if f.kill {
		s.log.Printf("fault crash: killing itself with SIGKILL")
		syscall.Kill(s.pid, syscall.SIGKILL)
		select {} // the signal is on its way; do nothing more meanwhile
	}
	s.log.Printf("fault crash: exiting with code %d", f.code)
	os.Exit(f.code)
}

func (s *service) startGrow(rate, max int64) {
	stop := make(chan struct{})
	s.mu.Lock()
	if s.growStop != nil {
		close(s.growStop)
	}
	s.growStop = stop
	base := s.grown
	s.mu.Unlock()
	go s.grow(stop, base, rate, max)
}

// stopGrow halts growth; release also drops what was grown and hands it
// back to the OS at once, so that RSS falls as well.
func (s *service) stopGrow(release bool) {
	s.mu.Lock()
	if s.growStop != nil {
		close(s.growStop)
		s.growStop = nil
	}
	freed := release && s.grown > 0
	if release {
		s.chunks, s.grown = nil, 0
	}
	s.mu.Unlock()
	if freed {
		debug.FreeOSMemory()
	}
}

// grow chases rate*elapsed rather than adding a fixed chunk per tick, so
// the rate holds even when ticks are late on a loaded machine.
func (s *service) grow(stop chan struct{}, base, rate, max int64) {
	t := time.NewTicker(growTick)
	defer t.Stop()
	begin := time.Now()
	for {
		var now time.Time
		select {
		case <-stop:
			return
		case now = <-t.C:
		}
		target := base + int64(float64(rate)*now.Sub(begin).Seconds())
		if max > 0 && target > max {
			target = max
		}
		s.mu.Lock()
		if s.growStop != stop {
			s.mu.Unlock()
			return
		}
		if need := min(target-s.grown, maxGrowChunk); need > 0 {
			b := make([]byte, need)
			// Fresh pages from the OS are not resident until written, and
			// the runtime knows they are zero, so it would not write them.
			for i := 0; i < len(b); i += pageSize {
				b[i] = 1
			}
			s.chunks = append(s.chunks, b)
			s.grown += need
		}
		done := max > 0 && s.grown >= max
		if done {
			s.growStop = nil
		}
		grown := s.grown
		s.mu.Unlock()
		if done {
			s.log.Printf("fault grow: reached max, holding %d bytes", grown)
			return
		}
	}
}

type info struct {
	Name    string    `json:"name"`
	Release string    `json:"release,omitempty"`
	Worker  string    `json:"worker,omitempty"`
	PID     int       `json:"pid"`
	Port    int       `json:"port"`
	Started time.Time `json:"started"`
	Healthy bool      `json:"healthy"`
	Grown   int64     `json:"grown_bytes"`
}

func (s *service) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", s.health)
	mux.HandleFunc("GET /ready", s.ready)
	mux.HandleFunc("GET /file", s.fileDigest)
	mux.HandleFunc("GET /{$}", s.identity)
	mux.HandleFunc("POST /fault/{kind}", s.fault)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.hanging.Load() {
			// Never answer. Once the client is gone, abort rather than
			// return, which would send it an empty 200.
			<-r.Context().Done()
			panic(http.ErrAbortHandler)
		}
		if s.grpc != nil && isGRPC(r) {
			s.grpc.srv.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (s *service) health(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	switch {
	case s.stopping.Load():
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "stopping "+s.cfg.name)
	case s.unhealthy.Load():
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "unhealthy "+s.cfg.name)
	default:
		io.WriteString(w, "ok "+s.cfg.name)
	}
}

// ready plays Envoy's admin /ready: 200 LIVE when serving, 503 otherwise,
// so the stand-in can play Envoy in its container.
func (s *service) ready(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if s.stopping.Load() || s.unhealthy.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "DRAINING\n")
		return
	}
	io.WriteString(w, "LIVE\n")
}

// fileDigest answers the SHA-256 of a file as the process sees it (?path=),
// so a test can tell which version of a mounted file a container has.
func (s *service) fileDigest(w http.ResponseWriter, r *http.Request) {
	b, err := os.ReadFile(r.URL.Query().Get("path"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	fmt.Fprintf(w, "%x\n", sha256.Sum256(b))
}

func (s *service) identity(w http.ResponseWriter, r *http.Request) {
	in := info{Name: s.cfg.name, Release: s.cfg.release, Worker: s.cfg.worker, PID: s.pid, Started: s.started, Healthy: !s.unhealthy.Load() && !s.stopping.Load()}
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok {
		in.Port = a.Port
	}
	s.mu.Lock()
	in.Grown = s.grown
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(in)
}

func (s *service) fault(w http.ResponseWriter, r *http.Request) {
	arg := r.URL.Query().Get("arg")
	if !r.URL.Query().Has("arg") {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<10))
		arg = strings.TrimSpace(string(b))
	}
	f, err := parseFault(r.PathValue("kind"), arg)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if f.startOnly() {
		http.Error(w, f.kind+" acts before listening: set it by flag or "+faultEnv, http.StatusConflict)
		return
	}
	source := "http " + r.RemoteAddr
	if f.kind == kindCrash && f.after == 0 {
		// Answer before dying, so the caller can tell the fault was taken;
		// the length makes the flushed reply complete rather than chunked.
		msg := "ok fault " + f.String() + "\n"
		w.Header().Set("Connection", "close")
		w.Header().Set("Content-Length", strconv.Itoa(len(msg)))
		io.WriteString(w, msg)
		http.NewResponseController(w).Flush()
		s.apply(f, source)
		return
	}
	// Apply before answering, so the caller's next request sees the fault.
	s.apply(f, source)
	io.WriteString(w, "ok fault "+f.String()+"\n")
}
