package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/internal/config"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
	"github.com/dhvisor/dhvisor/test/debpkg"
	"github.com/dhvisor/dhvisor/test/need"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// needDpkg: these tests install real packages with dpkg into a private
// root, which needs root (file ownership); CI runs them.
func needDpkg(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		need.Missing(t, "dpkg-deb")
	}
	need.Root(t, "dpkg installs files owned by others")
}

// memSource serves packages from memory, optionally failing once after
// cutAt bytes (an interrupted transfer).
type memSource struct {
	mu      sync.Mutex
	blobs   map[string][]byte
	cutAt   map[string]int64 // by address: end the stream with an error after this many bytes, once
	offsets []string         // "addr@offset" of every fetch
}

func (s *memSource) Fetch(_ context.Context, addr, sha string, offset int64, w io.Writer) error {
	s.mu.Lock()
	b, ok := s.blobs[sha]
	s.offsets = append(s.offsets, fmt.Sprintf("%s@%d", addr, offset))
	cut, cutting := s.cutAt[addr]
	delete(s.cutAt, addr)
	s.mu.Unlock()
	if !ok {
		return errors.New("no such package")
	}
	end := int64(len(b))
	if cutting && offset+cut < end {
		end = offset + cut
	}
	for p := offset; p < end; p += 1000 {
		if _, err := w.Write(b[p:min(p+1000, end)]); err != nil {
			return err
		}
	}
	if end < int64(len(b)) {
		return errors.New("connection reset")
	}
	return nil
}

type fixture struct {
	t      *testing.T
	dir    string
	root   string
	count  string // one line per run of the install command
	debs   map[string]string
	src    *memSource
	in     *Installer
	cancel context.CancelFunc
	done   chan struct{}
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	needDpkg(t)
	f := &fixture{t: t, dir: t.TempDir(), debs: map[string]string{}, src: &memSource{blobs: map[string][]byte{}, cutAt: map[string]int64{}}}
	f.root = filepath.Join(f.dir, "root")
	f.count = filepath.Join(f.dir, "installs.log")
	if err := debpkg.InitRoot(f.root); err != nil {
		t.Fatal(err)
	}
	for _, s := range []debpkg.Spec{{Version: "1.0"}, {Version: "2.0"}, {Version: "3.0", FailPostinstIf: "etc/fail"}} {
		s.Name, s.Standin = "illumon-db", "/bin/true"
		deb, err := debpkg.Build(f.dir, s)
		if err != nil {
			t.Fatal(err)
		}
		f.debs[s.Version] = deb
		b, _ := os.ReadFile(deb)
		f.src.blobs[sum(b)] = b
	}
	f.start()
	return f
}

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// cfg counts every run of the install command, then runs dpkg into root.
func (f *fixture) cfg() config.Packages {
	install := append([]string{"/bin/sh", "-c", `echo "$0" >> ` + f.count + `; exec "$@"`, "{{.Version}}"}, debpkg.InstallCommand(f.root)...)
	return config.Packages{Name: "illumon-db", Tool: "auto", Install: install, Query: debpkg.QueryCommand(f.root), CacheDir: filepath.Join(f.dir, "cache"), Timeout: config.Duration(time.Minute), Reserve: config.DefaultPackageReserve}
}

// start runs a new installer on the same journal, as a restarted agent.
func (f *fixture) start() {
	f.in = New(f.cfg(), f.src, filepath.Join(f.dir, "journal.json"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan struct{})
	go func() { f.in.Run(ctx); close(f.done) }()
	f.t.Cleanup(f.stop)
}

func (f *fixture) stop() {
	f.cancel()
	<-f.done
}

func (f *fixture) ref(version string) *pb.PackageRef {
	b, _ := os.ReadFile(f.debs[version])
	return &pb.PackageRef{Sha256: sum(b), Size: int64(len(b)), FileName: filepath.Base(f.debs[version]), Sources: []string{"c1", "c2"}}
}

func (f *fixture) install(token string, ref *pb.PackageRef, expect string) *pb.InstallResult {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := f.in.Install(ctx, &pb.InstallRequest{OpToken: token, Package: ref, ExpectVersion: expect}, nil)
	if err != nil {
		f.t.Fatalf("install %s: %v", token, err)
	}
	return res
}

func (f *fixture) installs() []string {
	b, _ := os.ReadFile(f.count)
	return strings.Fields(string(b))
}

func (f *fixture) installed() string {
	f.t.Helper()
	s, _ := debpkg.Installed(f.root, "illumon-db")
	return s
}

// An upgrade and a revert with the real dpkg: versions before and after,
// one install per step token however often the step is sent, the tool's
// output on a failing postinst, and a revert over the half-configured
// package.
func TestInstallUpgradeFailRevert(t *testing.T) {
	f := newFixture(t)
	if err := debpkg.Install(f.root, f.debs["1.0"]); err != nil {
		t.Fatal(err)
	}
	if got := f.in.Installed(context.Background()); got != "illumon-db 1.0" {
		t.Fatalf("installed: %q", got)
	}

	res := f.install("op-1/1/0", f.ref("2.0"), "")
	if res.Failed || res.Before != "1.0" || res.After != "2.0" || res.Package != "illumon-db" || res.Version != "2.0" {
		t.Fatalf("upgrade: %+v", res)
	}
	again := f.install("op-1/1/0", f.ref("2.0"), "")
	if !again.Repeated || again.After != "2.0" || again.Before != "1.0" {
		t.Fatalf("repeated step: %+v", again)
	}
	if got := f.installs(); len(got) != 1 {
		t.Fatalf("install command runs %v, want one", got)
	}
	if same := f.install("op-2/1/0", f.ref("2.0"), ""); !same.Unchanged || same.Failed {
		t.Fatalf("a new step to the installed version: %+v", same)
	}
	if got := f.installs(); len(got) != 1 {
		t.Fatalf("install command runs %v: the installed version was installed again", got)
	}

	if err := os.MkdirAll(filepath.Join(f.root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.root, "etc/fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	bad := f.install("op-3/1/0", f.ref("3.0"), "")
	if !bad.Failed || !strings.Contains(bad.Output, "postinst: cannot configure illumon-db 3.0") || !strings.Contains(bad.Message, "exited with status 1") || bad.After != "3.0 (half-configured)" {
		t.Fatalf("failing postinst: %+v", bad)
	}
	if got := f.installed(); got != "iF 3.0" {
		t.Fatalf("dpkg says %q", got)
	}
	if wrong := f.install("op-3/2/0", f.ref("1.0"), "2.0"); !wrong.Failed || !strings.Contains(wrong.Message, "the node ran 2.0 before") {
		t.Fatalf("revert to a package of another version than the node ran: %+v", wrong)
	}
	back := f.install("op-3/2/1", f.ref("2.0"), "2.0")
	if back.Failed || back.After != "2.0" || back.Before != "3.0 (half-configured)" {
		t.Fatalf("revert: %+v", back)
	}
	if got := f.installed(); got != "ii 2.0" {
		t.Fatalf("after the revert dpkg says %q", got)
	}
	// Packages of failed steps leave the cache; the installed one stays.
	ents, _ := os.ReadDir(filepath.Join(f.dir, "cache"))
	if len(ents) != 1 || ents[0].Name() != f.ref("2.0").Sha256 {
		t.Errorf("cache holds %v, want only 2.0's package", ents)
	}
}

// A fetch cut off half-way resumes from where it stopped, from the next
// coordinator; a package whose bytes do not match its sha256 is refused and
// its bytes discarded.
func TestFetchResumesAndVerifies(t *testing.T) {
	f := newFixture(t)
	ref := f.ref("1.0")
	f.src.cutAt["c1"] = ref.Size / 3
	res := f.install("op-1/0/0", ref, "")
	if res.Failed || res.After != "1.0" {
		t.Fatalf("install: %+v", res)
	}
	if len(f.src.offsets) != 2 || f.src.offsets[0] != "c1@0" || f.src.offsets[1] != fmt.Sprintf("c2@%d", ref.Size/3) {
		t.Fatalf("fetches %v: the second should resume where the first stopped", f.src.offsets)
	}

	bad := f.ref("2.0")
	f.src.blobs[bad.Sha256] = bytes.Repeat([]byte("x"), int(bad.Size))
	res = f.install("op-2/0/0", bad, "")
	if !res.Failed || !strings.Contains(res.Message, "expected "+bad.Sha256) {
		t.Fatalf("corrupt package: %+v", res)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "cache", bad.Sha256, bad.FileName+".part")); !os.IsNotExist(err) {
		t.Errorf("corrupt bytes kept: %v", err)
	}
	if got := f.installed(); got != "ii 1.0" {
		t.Errorf("dpkg says %q after a refused package", got)
	}
}

// An agent killed while the package tool ran: the next agent waits for that
// tool, then asks what is installed and marks the step done (the install
// finished) or runs it again (it did not).
func TestAgentRestartedMidInstall(t *testing.T) {
	for _, tt := range []struct {
		name        string
		finished    bool // the tool the old agent left finished the install
		wantMessage string
		wantRuns    int
	}{
		{"tool finished", true, "finished while the agent was down", 0},
		{"tool did not", false, "", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			ref := f.ref("2.0")
			if tt.finished {
				if err := debpkg.Install(f.root, f.debs["2.0"]); err != nil {
					t.Fatal(err)
				}
			}
			// What the killed agent left: the step running, its tool alive.
			tool := exec.Command("sleep", "0.5")
			if err := tool.Start(); err != nil {
				t.Fatal(err)
			}
			waited := make(chan struct{})
			go func() { _ = tool.Wait(); close(waited) }()
			f.stop()
			rec := &record{Token: "op-1/1/0", State: stateRunning, Sha256: ref.Sha256, PID: tool.Process.Pid}
			st, err := procfs.ReadStat(tool.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			rec.PIDStart = st.StartTicks
			f.in.save(rec)
			f.start()
			res := f.install("op-1/1/0", ref, "")
			// The tool has exited (gone, or a zombie until the goroutine
			// above reaps it) by the time the step answers.
			if st, err := procfs.ReadStat(rec.PID); err == nil && st.StartTicks == rec.PIDStart && st.State != 'Z' {
				t.Errorf("the step answered while the tool the old agent started still ran")
			}
			<-waited
			if res.Failed || res.After != "2.0" || !strings.Contains(res.Message, tt.wantMessage) {
				t.Fatalf("resumed step: %+v", res)
			}
			if got := len(f.installs()); got != tt.wantRuns {
				t.Errorf("install command ran %d times, want %d", got, tt.wantRuns)
			}
		})
	}
}

func TestRequestValidation(t *testing.T) {
	f := newFixture(t)
	good := f.ref("1.0")
	for _, tt := range []struct {
		name string
		req  *pb.InstallRequest
		want string
	}{
		{"no token", &pb.InstallRequest{Package: good}, "op_token: required"},
		{"no package", &pb.InstallRequest{OpToken: "t"}, "package: missing"},
		{"bad sha", &pb.InstallRequest{OpToken: "t", Package: &pb.PackageRef{Sha256: "abc", Size: 1, FileName: "x.deb", Sources: []string{"c"}}}, "package.sha256"},
		{"no sources", &pb.InstallRequest{OpToken: "t", Package: &pb.PackageRef{Sha256: good.Sha256, Size: 1, FileName: "x.deb"}}, "package.sources"},
		{"path in name", &pb.InstallRequest{OpToken: "t", Package: &pb.PackageRef{Sha256: good.Sha256, Size: 1, FileName: "../x.deb", Sources: []string{"c"}}}, "package.file_name"},
		{"relative path", &pb.InstallRequest{OpToken: "t", Package: &pb.PackageRef{Path: "x.deb", Sha256: good.Sha256}}, "must be absolute"},
		{"path without its hash", &pb.InstallRequest{OpToken: "t", Package: &pb.PackageRef{Path: "/srv/x.deb"}}, "package.sha256 \"\": expected the 64 lowercase hex digits dhctl hashed"},
		{"huge signature", &pb.InstallRequest{OpToken: "t", Package: &pb.PackageRef{Sha256: good.Sha256, Size: 1, FileName: "x.deb", Sources: []string{"c"}, Signature: make([]byte, 65<<10)}}, "package.signature: 66560 bytes"},
		{"negative timeout", &pb.InstallRequest{OpToken: "t", Package: good, TimeoutMs: -1}, "timeout_ms"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.in.Install(context.Background(), tt.req, nil)
			var re *RequestError
			if !errors.As(err, &re) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want a RequestError with %q", err, tt.want)
			}
		})
	}
}

func TestParseQuery(t *testing.T) {
	for in, want := range map[string]Installed{
		"":           {},
		"1.2-1":      {Version: "1.2-1", Clean: true},
		"(none):1.2": {Version: "1.2", Clean: true},
		"ii  1.0":    {Version: "1.0", Clean: true, Status: "ii"},
		"iF 3.0":     {Version: "3.0", Status: "iF"},
		"iU 3.0":     {Version: "3.0", Status: "iU"},
		"un 1.0":     {},
		"rc 1.0":     {},
		"iiR 1.0":    {Version: "1.0", Status: "iiR"},
	} {
		if got := parseQuery(in); got != want {
			t.Errorf("parseQuery(%q) = %+v, want %+v", in, got, want)
		}
	}
}

// A prefetch fills the cache without installing; the install step then
// installs without fetching again.
func TestPrefetch(t *testing.T) {
	f := newFixture(t)
	ref := f.ref("2.0")
	res, err := f.in.Install(context.Background(), &pb.InstallRequest{Package: ref, FetchOnly: true}, nil)
	if err != nil || res.Failed {
		t.Fatalf("prefetch: %v %+v", err, res)
	}
	if got := f.installed(); !strings.Contains(got, "no packages found") || len(f.installs()) != 0 {
		t.Fatalf("a prefetch installed: %q %v", got, f.installs())
	}
	if res := f.install("op-1/1/0", ref, ""); res.Failed || res.After != "2.0" {
		t.Fatalf("install: %+v", res)
	}
	if len(f.src.offsets) != 1 {
		t.Errorf("fetches %v: the install fetched again", f.src.offsets)
	}
}

// packages.timeout bounds an install even when the coordinator allows the
// step longer: the tool's whole process group is killed and the step fails
// with what the tool said.
func TestInstallTimeoutKillsTool(t *testing.T) {
	f := newFixture(t)
	cfg := f.cfg()
	pidFile := filepath.Join(f.dir, "tool.pid")
	cfg.Install = []string{"/bin/sh", "-c", "echo $$ > " + pidFile + "; echo unpacking; exec sleep 60"}
	cfg.Timeout = config.Duration(2 * time.Second)
	in := New(cfg, f.src, filepath.Join(f.dir, "timeout-journal.json"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { in.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	res, err := in.Install(ctx, &pb.InstallRequest{OpToken: "op-1/1/0", Package: f.ref("2.0"), TimeoutMs: time.Minute.Milliseconds()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Failed || !strings.Contains(res.Output, "unpacking") || !strings.Contains(res.Output, "(killed after") || !strings.Contains(res.Message, "/bin/sh killed after 2s, the install's time limit") {
		t.Fatalf("timed-out install: %+v", res)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the tool (pid %d) outlived its timeout: %v", pid, err)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// onNode puts version's package at a path only root can write, as an
// operator does for dhctl upgrade start --path, and returns that path.
func (f *fixture) onNode(version string) string {
	f.t.Helper()
	p := filepath.Join(need.RootOnlyDir(f.t), filepath.Base(f.debs[version]))
	copyFile(f.t, f.debs[version], p)
	return p
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	// Through a new file renamed into place: an attacker's swap, and a
	// descriptor already open on the old file keeps reading the old bytes.
	tmp := to + ".new"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, to); err != nil {
		t.Fatal(err)
	}
}

// upgrade --path: the agent copies the file once into its cache, installs
// only a copy with the sha256 dhctl hashed, and reads nothing from the path
// after that copy, so a file swapped before the step or while it runs is
// never installed; a path someone other than root could write is refused.
func TestInstallFromPath(t *testing.T) {
	f := newFixture(t)
	want := f.ref("2.0").Sha256

	t.Run("swapped before the agent copied it", func(t *testing.T) {
		p := f.onNode("2.0")
		copyFile(t, f.debs["3.0"], p)
		res := f.install("op-1/1/0", &pb.PackageRef{Path: p, Sha256: want}, "")
		if !res.Failed || !strings.Contains(res.Message, "changed after dhctl hashed it: its sha256 is "+f.ref("3.0").Sha256+" now, the upgrade was started with "+want) {
			t.Fatalf("swapped package: %+v", res)
		}
		if got := f.installs(); len(got) != 0 {
			t.Fatalf("install command ran for %v", got)
		}
	})

	t.Run("swapped while the step runs", func(t *testing.T) {
		p := f.onNode("2.0")
		cfg := f.cfg()
		// The install command swaps the file at the path first: whatever
		// the agent reads from the path from then on is 3.0.
		cfg.Install = append([]string{"/bin/sh", "-c", `cp ` + f.debs["3.0"] + ` ` + p + `.new && mv ` + p + `.new ` + p + `; echo "$0 $1" >> ` + f.count + `; shift; exec "$@"`, "{{.Version}}", "{{.File}}"}, debpkg.InstallCommand(f.root)...)
		in := New(cfg, f.src, filepath.Join(f.dir, "swap-journal.json"), slog.New(slog.NewTextHandler(io.Discard, nil)))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { in.Run(ctx); close(done) }()
		defer func() { cancel(); <-done }()
		res, err := in.Install(ctx, &pb.InstallRequest{OpToken: "op-2/1/0", Package: &pb.PackageRef{Path: p, Sha256: want}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Failed || res.Version != "2.0" || res.After != "2.0" {
			t.Fatalf("install: %+v", res)
		}
		if got := f.installed(); got != "ii 2.0" {
			t.Fatalf("dpkg says %q: the swapped file was installed", got)
		}
		runs := f.installs()
		if len(runs) != 2 || runs[0] != "2.0" || runs[1] != filepath.Join(f.dir, "cache", want, filepath.Base(p)) {
			t.Fatalf("install command ran as %v, want once on the cache's copy", runs)
		}
	})

	t.Run("paths others could write", func(t *testing.T) {
		// A verified copy in the cache has the bytes dhctl hashed, whatever
		// the path holds now: start without one.
		if err := os.RemoveAll(filepath.Join(f.dir, "cache")); err != nil {
			t.Fatal(err)
		}
		group := f.onNode("2.0")
		if err := os.Chmod(group, 0o664); err != nil {
			t.Fatal(err)
		}
		user := f.onNode("2.0")
		if err := os.Chown(user, 1234, 1234); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(filepath.Dir(user), "link.deb")
		if err := os.Symlink(user, link); err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct{ path, want string }{
			{f.debs["2.0"], "writable by its group or others (mode 1777)"}, // in t.TempDir, under /tmp
			{group, "writable by its group or others (mode 0664)"},
			{user, "is owned by uid 1234, not root"},
			{link, "symbolic link"},
			{"/nonexistent/x.deb", "no such file or directory"},
		} {
			res := f.install("op-3/"+tt.path, &pb.PackageRef{Path: tt.path, Sha256: want}, "")
			if !res.Failed || !strings.Contains(res.Message, tt.want) {
				t.Errorf("%s: %+v, want a failure with %q", tt.path, res, tt.want)
			}
		}
	})
}

// A fetch or a copy into the cache that would leave less than
// packages.reserve free is refused before a byte is written.
func TestFetchKeepsReserve(t *testing.T) {
	f := newFixture(t)
	ref := f.ref("2.0")
	reserve := int64(f.in.cfg.Reserve)
	var free int64
	f.in.freeSpace = func(dir string) (int64, error) {
		if dir != filepath.Join(f.dir, "cache") {
			t.Errorf("free space asked of %s", dir)
		}
		return free, nil
	}
	free = reserve + ref.Size - 1
	res := f.install("op-1/1/0", ref, "")
	if !res.Failed || !strings.Contains(res.Message, "not enough space in "+filepath.Join(f.dir, "cache")) || !strings.Contains(res.Message, "packages.reserve keeps 256.0MiB free") {
		t.Fatalf("fetch onto a full disk: %+v", res)
	}
	if len(f.src.offsets) != 0 {
		t.Fatalf("fetched %v", f.src.offsets)
	}
	p := f.onNode("2.0")
	if res := f.install("op-1/2/0", &pb.PackageRef{Path: p, Sha256: ref.Sha256}, ""); !res.Failed || !strings.Contains(res.Message, "not enough space") {
		t.Fatalf("copy onto a full disk: %+v", res)
	}
	free = reserve + ref.Size
	if res := f.install("op-1/3/0", ref, ""); res.Failed || res.After != "2.0" {
		t.Fatalf("with room for the package: %+v", res)
	}
}
