package container

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/internal/config"
)

func TestDockerUser(t *testing.T) {
	root, err := user.Lookup("root")
	if err != nil {
		t.Skip("no root user to resolve")
	}
	cases := []struct {
		user, group, want string
		bad               bool
	}{
		{"", "", "", false},
		{"101", "", "101", false},
		{"101:102", "", "101:102", false},
		{"101", "102", "101:102", false},
		{"root", "", root.Uid + ":" + root.Gid, false},
		{"root:root", "", root.Uid + ":" + root.Gid, false},
		{":0", "", "", true},
		{"no-such-user-here", "", "", true},
		{"101", "no-such-group-here", "", true},
	}
	for _, c := range cases {
		got, err := dockerUser(c.user, c.group)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("dockerUser(%q, %q) = %q, %v; want %q, error %v", c.user, c.group, got, err, c.want, c.bad)
		}
	}
}

func TestChanged(t *testing.T) {
	old := map[string]string{"image x": "a", "settings": "s", "file /c.pem": "1"}
	cases := []struct {
		cur  map[string]string
		want string
	}{
		{map[string]string{"image x": "b", "settings": "s", "file /c.pem": "1"}, "image x"},
		{map[string]string{"image x": "a", "settings": "s", "file /c.pem": "2"}, "file /c.pem"},
		{map[string]string{"image y": "a", "settings": "t", "file /c.pem": "1"}, "image y, settings, image x (gone)"},
		{old, "settings"}, // same parts yet another hash: only settings can say
	}
	for _, c := range cases {
		if got := changed(old, c.cur); got != c.want {
			t.Errorf("changed(%v) = %q, want %q", c.cur, got, c.want)
		}
	}
}

func TestDigestAndFingerprint(t *testing.T) {
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certs, 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(p, s string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	put(filepath.Join(certs, "a.pem"), "A")
	put(filepath.Join(dir, "b.pem"), "B")
	spec := runtime.Spec{Container: &config.Container{Mounts: []config.Mount{{Source: certs, Target: "/c"}, {Source: filepath.Join(dir, "b.pem"), Target: "/b.pem"}}}}

	d1, err := digestPath(certs)
	if err != nil {
		t.Fatal(err)
	}
	f1 := fingerprint(spec)
	put(filepath.Join(certs, "a.pem"), "A2")
	d2, _ := digestPath(certs)
	if d1 == d2 || fingerprint(spec) == f1 {
		t.Fatal("a file changed below a mounted directory and neither digest nor fingerprint moved")
	}
	put(filepath.Join(certs, "a.pem"), "A")
	if d3, _ := digestPath(certs); d3 != d1 {
		t.Fatal("the digest is not of the content alone")
	}
	if _, err := digestPath(filepath.Join(dir, "missing.pem")); err == nil {
		t.Fatal("a missing mount source has a digest")
	}
	f := fingerprint(spec)
	if err := os.Remove(filepath.Join(dir, "b.pem")); err != nil {
		t.Fatal(err)
	}
	if fingerprint(spec) == f {
		t.Fatal("a removed file left the fingerprint as it was")
	}
}

// TestDesireReadsFilesOnlyOnceChanged: resolved again with the previous
// result, the mounted files are read again only when what stat says of them
// moved, while the image is resolved every time (a moved tag is seen).
func TestDesireReadsFilesOnlyOnceChanged(t *testing.T) {
	pem := filepath.Join(t.TempDir(), "server.pem")
	if err := os.WriteFile(pem, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := newFakeEngine(os.Getpid())
	rt := New(f, DefaultTiming, slog.New(slog.NewTextHandler(io.Discard, nil)))
	spec := runtime.Spec{Name: "envoy", Owner: "o", Container: &config.Container{Name: "e", Image: "envoy:1", Mounts: []config.Mount{{Source: pem, Target: "/p.pem"}}}}
	resolve := func(prev desired) desired {
		t.Helper()
		d, err := rt.desire(context.Background(), spec, prev)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	key := "file " + pem
	first := resolve(desired{})

	// Other content of the same size, written in place, its time put back:
	// stat says nothing changed, so the file is not read again.
	st, err := os.Stat(pem)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pem, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(pem, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if again := resolve(first); again.parts[key] != first.parts[key] || again.hash != first.hash {
		t.Fatalf("the unchanged-looking file was read again: %s -> %s", first.parts[key], again.parts[key])
	}
	fresh := resolve(desired{})
	if fresh.parts[key] == first.parts[key] {
		t.Fatal("a fresh resolution does not read the file")
	}

	// Its time moves: read again.
	later := st.ModTime().Add(time.Second)
	if err := os.Chtimes(pem, later, later); err != nil {
		t.Fatal(err)
	}
	touched := resolve(first)
	if touched.parts[key] != fresh.parts[key] {
		t.Fatalf("a file whose time moved was not read again: %s, want %s", touched.parts[key], fresh.parts[key])
	}

	// The tag names another image: seen without any file changing.
	f.set(func(f *fakeEngine) { f.imageID = "sha256:2" })
	if moved := resolve(touched); moved.hash == touched.hash {
		t.Fatalf("the image the tag names moved and the hash stayed %s", moved.hash)
	}
}

// removingEngine is removing its container for the first inspections.
type removingEngine struct {
	*fakeEngine
	left int // inspections that still find it being removed
}

func (e *removingEngine) Inspect(context.Context, string) (Info, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.left == 0 {
		return Info{}, ErrNotFound
	}
	e.left--
	return Info{ID: "c0ffee", Removing: true}, nil
}

// A container the engine is removing (docker rm -f) is waited for, not
// started: the engine refuses to, and that failed start counted as a
// restart of its own.
func TestRemovedWaitsForTheEngine(t *testing.T) {
	e := &removingEngine{fakeEngine: newFakeEngine(1), left: 3}
	r := &Runtime{engine: e, log: slog.New(slog.DiscardHandler)}
	in, err := r.removed(context.Background(), "envoy")
	if !errors.Is(err, ErrNotFound) || in.ID != "" || e.left != 0 {
		t.Fatalf("removed: %+v, %v (%d inspections left)", in, err, e.left)
	}
	e.left = 1 << 20
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := r.removed(ctx, "envoy"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("a removal that never ends: %v", err)
	}
}
