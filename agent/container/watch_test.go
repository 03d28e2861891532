package container

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/internal/config"
)

// fakeEngine is an in-memory engine for the watcher's logic: one running
// container whose events the test sends, and an engine that can be made
// unreachable.
type fakeEngine struct {
	mu      sync.Mutex
	info    Info
	imageID string
	down    bool
	streams chan chan Event // each Events call hands the test its channel
	errs    chan error      // breaks the current stream
}

func newFakeEngine(pid int) *fakeEngine {
	return &fakeEngine{info: Info{ID: "c0ffee0000000000", Running: true, Pid: pid}, imageID: "sha256:1",
		streams: make(chan chan Event, 8), errs: make(chan error, 1)}
}

func (f *fakeEngine) set(fn func(*fakeEngine)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeEngine) Ping(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return ErrUnreachable
	}
	return nil
}

func (f *fakeEngine) Inspect(context.Context, string) (Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return Info{}, ErrUnreachable
	}
	return f.info, nil
}

func (f *fakeEngine) ImageID(context.Context, string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.imageID, nil
}

func (f *fakeEngine) Events(ctx context.Context, _ string, _ time.Time) (<-chan Event, <-chan error) {
	ch := make(chan Event)
	f.streams <- ch
	return ch, f.errs
}

func (f *fakeEngine) Pull(context.Context, string) error                { return errors.New("no registry") }
func (f *fakeEngine) Create(context.Context, Create) (string, error)    { return "", errors.New("unused") }
func (f *fakeEngine) Start(context.Context, string) error               { return nil }
func (f *fakeEngine) Stop(context.Context, string, time.Duration) error { return nil }
func (f *fakeEngine) Kill(context.Context, string) error                { return nil }
func (f *fakeEngine) Remove(context.Context, string) error              { return nil }
func (f *fakeEngine) Logs(context.Context, string, time.Time, int, bool, io.Writer) error {
	return nil
}

// fakeService is a runtime on the fake engine, with fast file checks, and
// a service with a mounted file: what the fake engine's container was
// created from (d) and that file.
func fakeService(t *testing.T, f *fakeEngine) (rt *Runtime, spec runtime.Spec, d desired, pem string) {
	t.Helper()
	dir := t.TempDir()
	pem = filepath.Join(dir, "server.pem")
	if err := os.WriteFile(pem, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	rt = New(f, Timing{Recheck: time.Hour, FileCheck: 10 * time.Millisecond, Reconnect: 10 * time.Millisecond}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	spec = runtime.Spec{Name: "envoy", Owner: dir, Container: &config.Container{Name: "e", Image: "envoy:1", Mounts: []config.Mount{{Source: pem, Target: "/p.pem"}}}}
	d, err := rt.desire(context.Background(), spec, desired{})
	if err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fakeEngine) { f.info.Labels = d.create.Labels })
	return rt, spec, d, pem
}

// watched starts a watcher on the fake engine's container, with a mounted
// file, and returns the process and the first event stream.
func watched(t *testing.T, f *fakeEngine) (*process, chan Event, string) {
	t.Helper()
	rt, spec, d, pem := fakeService(t, f)
	p := rt.watch(spec, d, f.info, procIdentity(f.info.Pid), time.Now())
	t.Cleanup(p.Release)
	return p, <-f.streams, pem
}

func nextNotice(t *testing.T, p *process) runtime.Notice {
	t.Helper()
	select {
	case <-p.Noticed():
	case <-time.After(5 * time.Second):
		t.Fatal("no notice")
	}
	ns := p.Notices()
	if len(ns) == 0 {
		t.Fatal("noticed without notices")
	}
	return ns[0]
}

func ended(t *testing.T, p *process) runtime.Exit {
	t.Helper()
	select {
	case <-p.Done():
		return p.Exit()
	case <-time.After(5 * time.Second):
		t.Fatal("not ended")
	}
	return runtime.Exit{}
}

func TestWatcherEvents(t *testing.T) {
	at := time.Unix(1700000000, 0)
	cases := []struct {
		name   string
		events []Event
		want   runtime.Exit
	}{
		{"docker kill", []Event{{Action: "kill", Attrs: map[string]string{"signal": "9"}}, {Action: "die", Attrs: map[string]string{"exitCode": "137"}, Time: at}}, runtime.Exit{Code: 137, Signal: "SIGKILL", At: at}},
		{"crash", []Event{{Action: "die", Attrs: map[string]string{"exitCode": "3"}, Time: at}}, runtime.Exit{Code: 3, At: at}},
		{"killed from outside the engine", []Event{{Action: "die", Attrs: map[string]string{"exitCode": "143"}, Time: at}}, runtime.Exit{Code: 143, Signal: "SIGTERM", At: at}},
		{"out of memory", []Event{{Action: "oom"}, {Action: "die", Attrs: map[string]string{"exitCode": "137"}, Time: at}}, runtime.Exit{Code: 137, Signal: "SIGKILL (out of memory)", At: at}},
		{"removed", []Event{{Action: "destroy", Time: at}}, runtime.Exit{Code: -1, Signal: "removal of the container", At: at}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFakeEngine(os.Getpid())
			p, evs, _ := watched(t, f)
			for _, ev := range c.events {
				evs <- ev
			}
			if got := ended(t, p); got != c.want {
				t.Fatalf("exit %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestWatcherNotices(t *testing.T) {
	f := newFakeEngine(os.Getpid())
	p, evs, pem := watched(t, f)

	evs <- Event{Action: "health_status: unhealthy"}
	if n := nextNotice(t, p); n.Kind != runtime.Unhealthy {
		t.Fatalf("notice %+v", n)
	}

	// The engine goes away: Unseen; back with the container running: Seen.
	f.set(func(f *fakeEngine) { f.down = true })
	f.errs <- ErrUnreachable
	if n := nextNotice(t, p); n.Kind != runtime.Unseen {
		t.Fatalf("notice %+v", n)
	}
	f.set(func(f *fakeEngine) { f.down = false })
	if n := nextNotice(t, p); n.Kind != runtime.Seen {
		t.Fatalf("notice %+v", n)
	}
	<-f.streams // resubscribed

	// A mounted file changes: one Stale, naming it, however long it waits.
	if err := os.WriteFile(pem, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n := nextNotice(t, p); n.Kind != runtime.Stale || n.Message != "file "+pem+" changed" {
		t.Fatalf("notice %+v", n)
	}
	time.Sleep(100 * time.Millisecond)
	select {
	case <-p.Noticed():
		t.Fatalf("a second notice for the same change: %+v", p.Notices())
	default:
	}

	// The image the tag names changes, seen on a retarget: Stale again.
	f.set(func(f *fakeEngine) { f.imageID = "sha256:2" })
	spec := runtime.Spec{Name: "envoy", Owner: filepath.Dir(pem), Container: &config.Container{Name: "e", Image: "envoy:1", Mounts: []config.Mount{{Source: pem, Target: "/p.pem"}}}}
	p.Retarget(spec)
	if n := nextNotice(t, p); n.Kind != runtime.Stale || n.Message != "file "+pem+", image envoy:1 changed" {
		t.Fatalf("notice %+v", n)
	}

	// Back while the engine was away, the container is gone: it ended.
	f.set(func(f *fakeEngine) { f.down = true })
	f.errs <- ErrUnreachable
	_ = nextNotice(t, p)
	f.set(func(f *fakeEngine) { f.down = false; f.info.Running, f.info.ExitCode = false, 0 })
	if e := ended(t, p); e.Code != 0 {
		t.Fatalf("exit %+v", e)
	}
}

func procIdentity(pid int) procfs.Identity {
	id, _ := procfs.IdentityOf(pid)
	return id
}

// An adopted container is only this agent's own, still running, recorded
// process; and it keeps the inputs its labels say it was created from, so
// that what changed while no agent watched is told (Stale) at once, and
// only that.
func TestAdopt(t *testing.T) {
	ctx := context.Background()
	refused := []struct {
		name   string
		change func(f *fakeEngine, id *procfs.Identity)
	}{
		{"another agent's", func(f *fakeEngine, _ *procfs.Identity) {
			f.info.Labels = map[string]string{LabelOwner: "/other", LabelService: "envoy"}
		}},
		{"not running", func(f *fakeEngine, _ *procfs.Identity) { f.info.Running = false }},
		{"being removed", func(f *fakeEngine, _ *procfs.Identity) { f.info.Removing = true }},
		{"another process", func(_ *fakeEngine, id *procfs.Identity) { id.StartTicks++ }},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			f := newFakeEngine(os.Getpid())
			rt, spec, _, _ := fakeService(t, f)
			id := procIdentity(f.info.Pid)
			f.set(func(f *fakeEngine) { c.change(f, &id) })
			if p, err := rt.Adopt(ctx, spec, id); err == nil {
				p.(*process).Release()
				t.Fatal("adopted")
			}
		})
	}
	adopt := func(t *testing.T, rt *Runtime, spec runtime.Spec, f *fakeEngine) *process {
		t.Helper()
		p, err := rt.Adopt(ctx, spec, procIdentity(f.info.Pid))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.(*process).Release)
		return p.(*process)
	}

	t.Run("file changed meanwhile", func(t *testing.T) {
		f := newFakeEngine(os.Getpid())
		rt, spec, _, pem := fakeService(t, f)
		if err := os.WriteFile(pem, []byte("two"), 0o644); err != nil {
			t.Fatal(err)
		}
		p := adopt(t, rt, spec, f)
		if n := nextNotice(t, p); n.Kind != runtime.Stale || n.Message != "file "+pem+" changed" {
			t.Fatalf("notice %+v", n)
		}
	})

	// Unchanged, the labels' inputs are the spec's: nothing is told over
	// many file checks, and what changes next is told alone.
	t.Run("unchanged", func(t *testing.T) {
		f := newFakeEngine(os.Getpid())
		rt, spec, _, _ := fakeService(t, f)
		p := adopt(t, rt, spec, f)
		select {
		case <-p.Noticed():
			t.Fatalf("notices for an unchanged container: %+v", p.Notices())
		case <-time.After(20 * rt.timing.FileCheck):
		}
		f.set(func(f *fakeEngine) { f.imageID = "sha256:2" })
		p.Retarget(spec) // checks again, whether or not the first check came before the image moved
		if n := nextNotice(t, p); n.Kind != runtime.Stale || n.Message != "image envoy:1 changed" {
			t.Fatalf("notice %+v", n)
		}
	})
}
