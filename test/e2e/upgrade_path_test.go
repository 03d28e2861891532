package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
	"github.com/dhvisor/dhvisor/test/debpkg"
	"github.com/dhvisor/dhvisor/test/need"
)

// upgrade --path with the package swapped after dhctl hashed it and before
// any agent read it: every agent refuses the file it finds, naming both
// hashes, and installs nothing. The path is a fifo that dhctl reads 2.0
// from while the name is swapped for 3.0 behind it, so the swap falls
// between the two reads however fast the upgrade runs.
func TestUpgradePathSwappedAfterHash(t *testing.T) {
	u := startUpgradeCluster(t, 300*time.Millisecond)
	ctx := context.Background()
	p := filepath.Join(need.RootOnlyDir(t), "illumon-db_2.0.deb")
	if err := unix.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	type result struct {
		out string
		err error
	}
	started := make(chan result, 1)
	go func() {
		out, err := u.Ctl(ctx, "upgrade", "start", "--path", p, "--detach")
		started <- result{out, err}
	}()
	// The write end opens only once dhctl has the fifo open to read it.
	var fd int
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if fd, err = unix.Open(p, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err == nil {
			break
		}
		if !errors.Is(err, unix.ENXIO) || time.Now().After(deadline) {
			t.Fatalf("dhctl never opened %s to hash it: %v", p, err)
		}
		select {
		case r := <-started:
			t.Fatalf("dhctl upgrade start without reading %s: %v\n%s", p, r.err, r.out)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		t.Fatal(err)
	}
	b3, err := os.ReadFile(u.debs["3.0"])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p+".new", b3, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".new", p); err != nil {
		t.Fatal(err)
	}
	b2, err := os.ReadFile(u.debs["2.0"])
	if err != nil {
		t.Fatal(err)
	}
	w := os.NewFile(uintptr(fd), p)
	if _, err := w.Write(b2); err != nil {
		t.Fatal(err)
	}
	w.Close()
	r := <-started
	if r.err != nil {
		t.Fatalf("dhctl upgrade start --path: %v\n%s", r.err, r.out)
	}
	sum := func(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }
	cl, closeConn, err := u.Client(0)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	op := upgradeOp(t, u.Cluster)
	if got := op.Request.Upgrade.PathSha256; got != sum(b2) {
		t.Fatalf("the upgrade carries sha256 %q, want %s (what dhctl read)", got, sum(b2))
	}
	op = waitOp(t, cl, op.Id, 90*time.Second, func(o *pb.Operation) bool { return o.State != "running" })
	want := "its sha256 is " + sum(b3) + " now, the upgrade was started with " + sum(b2)
	if op.State == "done" || !strings.Contains(op.Message, want) {
		t.Fatalf("upgrade %s: %s\nwant a refusal with %q", op.State, op.Message, want)
	}
	for _, n := range classicNodes {
		if got := u.installs(n.Name); len(got) != 0 {
			t.Errorf("%s ran the install command for %v", n.Name, got)
		}
	}
	for node := range u.roots {
		if got, _ := debpkg.Installed(u.roots[node], "illumon-db"); got != "ii 1.0" {
			t.Errorf("%s: dpkg says %q, want ii 1.0", node, got)
		}
	}
}
