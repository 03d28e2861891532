package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
)

// process is one run of a container, from its start to its end.
type process struct {
	rt    *Runtime
	id    string
	ident procfs.Identity
	info  runtime.Container

	cancel   context.CancelFunc
	finished chan struct{} // the watch goroutine returned
	done     chan struct{} // the container ended (closed by the watcher only)
	exit     runtime.Exit

	retarget chan runtime.Spec // latest spec wins (capacity 1)

	mu      sync.Mutex
	notices []runtime.Notice
	noticed chan struct{} // capacity 1
}

var _ runtime.Watched = (*process)(nil)

func (r *Runtime) watch(spec runtime.Spec, d desired, in Info, ident procfs.Identity, since time.Time) *process {
	ctx, cancel := context.WithCancel(context.Background())
	p := &process{
		rt: r, id: in.ID, ident: ident,
		info:   runtime.Container{ID: in.ID, Name: spec.Container.Name, Image: spec.Container.Image, StartedAt: in.StartedAt},
		cancel: cancel, finished: make(chan struct{}), done: make(chan struct{}),
		retarget: make(chan runtime.Spec, 1), noticed: make(chan struct{}, 1),
	}
	w := &watcher{p: p, spec: spec, hash: d.hash, parts: d.parts, last: d, fp: d.files}
	if d.files == "" {
		// Files this agent never read (an adopted container): read, and
		// the inputs checked, at the first file check that finds them
		// still, as files seen changing are.
		w.fp, w.moving = fingerprint(spec), true
	}
	go func() {
		defer close(p.finished)
		w.run(ctx, since)
	}()
	return p
}

func (p *process) Identity() procfs.Identity    { return p.ident }
func (p *process) Done() <-chan struct{}        { return p.done }
func (p *process) Exit() runtime.Exit           { return p.exit }
func (p *process) Container() runtime.Container { return p.info }
func (p *process) Noticed() <-chan struct{}     { return p.noticed }

func (p *process) Notices() []runtime.Notice {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.notices
	p.notices = nil
	return out
}

func (p *process) notify(kind runtime.NoticeKind, msg string) {
	p.mu.Lock()
	p.notices = append(p.notices, runtime.Notice{Kind: kind, Message: msg})
	p.mu.Unlock()
	select {
	case p.noticed <- struct{}{}:
	default:
	}
}

func (p *process) Retarget(spec runtime.Spec) {
	for {
		select {
		case p.retarget <- spec:
			return
		default:
		}
		select {
		case <-p.retarget: // drop the older one
		default:
		}
	}
}

// Release stops watching; the container runs on for the next agent.
func (p *process) Release() {
	p.cancel()
	<-p.finished
}

// Stop stops the container (its stop signal, SIGKILL after timeout) and
// returns once the watcher saw it end.
func (p *process) Stop(ctx context.Context, timeout time.Duration) (runtime.Exit, error) {
	if err := p.rt.engine.Stop(ctx, p.id, timeout); err != nil && !errors.Is(err, ErrNotFound) {
		return runtime.Exit{}, err
	}
	select {
	case <-p.done:
		return p.exit, nil
	case <-ctx.Done():
		return runtime.Exit{}, ctx.Err()
	}
}

func (p *process) Kill() error {
	err := p.rt.engine.Kill(context.Background(), p.id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// watcher follows one container for its process: events first, an
// inspection now and then, the engine's reachability, and whether the
// container's inputs still hash as they did when it was created.
type watcher struct {
	p      *process
	spec   runtime.Spec
	hash   string            // of the inputs the container was created from
	parts  map[string]string // and their parts
	last   desired           // the inputs as last resolved
	told   string            // the last input hash a Stale notice was sent for
	fp     string            // the mounted files' fingerprint
	moving bool              // fp changed at the last file check: wait until it settles
	away   bool              // the engine was out of reach: Seen is due once it answers
	signal string            // from the last kill event
	oom    bool
}

func (w *watcher) run(ctx context.Context, since time.Time) {
	t := w.p.rt.timing
	recheck := time.NewTicker(t.Recheck)
	defer recheck.Stop()
	files := time.NewTicker(t.FileCheck)
	defer files.Stop()
	for {
		err := w.follow(ctx, &since, recheck.C, files.C)
		if err == nil || ctx.Err() != nil {
			return
		}
		// The engine is out of sight: the container may run on (an engine
		// with live-restore) or be gone; only the engine can say which.
		w.p.rt.log.Warn("container engine unreachable", "container", w.p.info.Name, "err", err)
		w.p.notify(runtime.Unseen, "docker engine unreachable: "+err.Error())
		w.away = true
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(t.Reconnect):
			}
			if w.p.rt.engine.Ping(ctx) == nil {
				break
			}
		}
	}
}

// follow watches until the container ended (nil) or the engine went out of
// reach (the error).
func (w *watcher) follow(ctx context.Context, since *time.Time, recheck, files <-chan time.Time) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Subscribed from since (the start): nothing between the start and
	// the subscription is missed; what an engine that restarted forgot, or
	// one whose clock is not ours (a remote engine) left out, the
	// inspection below covers.
	evs, errs := w.p.rt.engine.Events(sctx, w.p.id, *since)
	if ended, _ := w.inspect(ctx); ended {
		return nil
	}
	if w.away {
		w.away = false
		w.p.rt.log.Info("container engine reachable again; container still running", "container", w.p.info.Name)
		w.p.notify(runtime.Seen, "docker engine reachable again; container still running")
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return err
		case ev := <-evs:
			*since = ev.Time
			if w.event(ctx, ev) {
				return nil
			}
		case <-recheck:
			ended, err := w.inspect(ctx)
			if ended {
				return nil
			}
			if err != nil {
				// An engine on its way down may answer oddly before it
				// stops answering: only a ping tells.
				if err := w.p.rt.engine.Ping(ctx); err != nil {
					return err
				}
			}
			// Files being written are left to the file check, which waits
			// for them to settle.
			if !w.filesMoving() {
				w.checkInputs(ctx)
			}
		case <-files:
			if w.filesMoving() {
				continue
			}
			if w.moving {
				w.moving = false
				w.checkInputs(ctx)
			}
		case spec := <-w.p.retarget:
			w.spec = spec
			if !w.filesMoving() {
				w.checkInputs(ctx)
			}
		}
	}
}

// filesMoving takes the mounted files' fingerprint and reports whether it
// changed since the last one: then they are being written, and hashing
// waits until they stay as they are for a whole file check.
func (w *watcher) filesMoving() bool {
	fp := fingerprint(w.spec)
	if fp == w.fp {
		return false
	}
	w.fp, w.moving = fp, true
	return true
}

// event handles one container event; true when the container ended.
func (w *watcher) event(ctx context.Context, ev Event) bool {
	switch ev.Action {
	case "oom":
		w.oom = true
	case "kill":
		w.signal = signalName(ev.Attrs["signal"])
	case "die":
		code, err := strconv.Atoi(ev.Attrs["exitCode"])
		if err != nil {
			code = -1
		}
		w.end(runtime.Exit{Code: code, Signal: w.endSignal(code), At: ev.Time})
		return true
	case "destroy":
		w.end(runtime.Exit{Code: -1, Signal: "removal of the container", At: ev.Time})
		return true
	case "health_status: unhealthy":
		w.p.notify(runtime.Unhealthy, "the image's health check reports unhealthy")
	}
	return false
}

// endSignal says what killed the container: the signal of the kill event
// before its death, or out of memory.
func (w *watcher) endSignal(code int) string {
	switch {
	case w.oom:
		return "SIGKILL (out of memory)"
	case w.signal != "" && code > 128:
		return w.signal
	case code > 128 && code < 128+65:
		// No kill event: a signal from outside the engine (the shell's
		// 128+n convention of the container's exit code).
		return unix.SignalName(syscall.Signal(code - 128))
	}
	return ""
}

// inspect checks the container is still the running one; true (and the
// process ended) when it is not. An engine that does not answer says
// nothing but its error.
func (w *watcher) inspect(ctx context.Context) (bool, error) {
	in, err := w.p.rt.engine.Inspect(ctx, w.p.id)
	switch {
	case errors.Is(err, ErrNotFound):
		w.end(runtime.Exit{Code: -1, Signal: "removal of the container", At: time.Now()})
		return true, nil
	case err != nil:
		return false, err
	case !in.Running || in.Pid != w.p.ident.PID:
		at := in.FinishedAt
		if at.IsZero() || at.Year() < 2000 {
			at = time.Now()
		}
		code := in.ExitCode
		if in.OOMKilled {
			w.oom = true
		}
		w.end(runtime.Exit{Code: code, Signal: w.endSignal(code), At: at})
		return true, nil
	}
	return false, nil
}

func (w *watcher) end(e runtime.Exit) {
	w.p.exit = e
	close(w.p.done)
}

// checkInputs hashes what the container would be created from now (the
// mounted files only if they changed since last read) and tells the
// supervisor once per change that it must be replaced.
func (w *watcher) checkInputs(ctx context.Context) {
	d, err := w.p.rt.desire(ctx, w.spec, w.last)
	if err != nil {
		if !errors.Is(err, runtime.ErrUnavailable) {
			w.p.rt.log.Warn("cannot check the container's inputs; keeping it as it is", "container", w.p.info.Name, "err", err)
		}
		return
	}
	w.last = d
	if d.hash == w.hash || d.hash == w.told {
		return
	}
	w.told = d.hash
	w.p.notify(runtime.Stale, fmt.Sprintf("%s changed", changed(w.parts, d.parts)))
}

func signalName(s string) string {
	if n, err := strconv.Atoi(s); err == nil {
		if name := unix.SignalName(syscall.Signal(n)); name != "" {
			return name
		}
	}
	return s
}

func inode(st os.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Ino
	}
	return 0
}
