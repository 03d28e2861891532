package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/pkgstore"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// The store is pruned at start and when the package records change, not
// on every change of the state (worker registrations come by the hundred).
func TestPrunePackagesOnPackageChanges(t *testing.T) {
	dir := t.TempDir()
	store, err := pkgstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	// put writes an unrecorded package old enough to be pruned.
	put := func(content string) string {
		b := sha256.Sum256([]byte(content))
		sha := hex.EncodeToString(b[:])
		if err := store.Write(sha, int64(len(content)), strings.NewReader(content)); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-time.Hour)
		if err := os.Chtimes(filepath.Join(dir, sha), old, old); err != nil {
			t.Fatal(err)
		}
		return sha
	}
	gone := func(sha string) bool {
		_, err := os.Stat(filepath.Join(dir, sha))
		return os.IsNotExist(err)
	}
	waitGone := func(sha string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !gone(sha); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s not pruned", sha[:12])
			}
		}
	}
	state := fsm.New()
	kept := put("recorded")
	apply(t, state, 1, &pb.Command{Cmd: &pb.Command_PackageAdd{PackageAdd: &pb.Package{Sha256: kept, Size: 8, FileName: "a.deb", Replicas: []string{"c1"}}}})
	stray := put("stray")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		prunePackages(ctx, state, store, slog.New(slog.DiscardHandler))
	}()
	defer func() { cancel(); <-done }()

	waitGone(stray)
	later := put("later")
	apply(t, state, 2, &pb.Command{Cmd: &pb.Command_NodeUpsert{NodeUpsert: &pb.Node{Name: "n1", State: "alive"}}})
	time.Sleep(50 * time.Millisecond)
	if gone(later) {
		t.Fatal("a change of a node's record pruned the store")
	}
	apply(t, state, 3, &pb.Command{Cmd: &pb.Command_PackageAdd{PackageAdd: &pb.Package{Sha256: strings.Repeat("b", 64), Size: 1, FileName: "b.deb", Replicas: []string{"c1"}}}})
	waitGone(later)
	if gone(kept) {
		t.Fatal("a recorded package was pruned")
	}
}
