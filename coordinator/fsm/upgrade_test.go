package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func sha(i int) string { return fmt.Sprintf("%064x", i) }

func TestPackages(t *testing.T) {
	a := &applier{t: t, f: New()}
	add := func(p *pb.Package, at int64) any {
		return a.apply(&pb.Command{AtUnixMs: at, Who: "operator:alice", Cmd: &pb.Command_PackageAdd{PackageAdd: p}})
	}
	for _, tt := range []struct {
		name string
		p    *pb.Package
		want string
	}{
		{"bad sha", &pb.Package{Sha256: "abc", Size: 1, FileName: "x.rpm", Replicas: []string{"c1"}}, "sha256"},
		{"no size", &pb.Package{Sha256: sha(1), FileName: "x.rpm", Replicas: []string{"c1"}}, "size 0"},
		{"path", &pb.Package{Sha256: sha(1), Size: 1, FileName: "a/x.rpm", Replicas: []string{"c1"}}, "file_name"},
		{"no holder", &pb.Package{Sha256: sha(1), Size: 1, FileName: "x.rpm"}, "no coordinator holds"},
	} {
		if err, ok := add(tt.p, 1).(error); !ok || !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
	add(&pb.Package{Sha256: sha(1), Size: 10, FileName: "a.rpm", Replicas: []string{"c2", "c1"}}, 100)
	// Another upload adds holders; an install teaches name and version.
	add(&pb.Package{Sha256: sha(1), Size: 10, FileName: "a.rpm", Replicas: []string{"c3"}}, 200)
	add(&pb.Package{Sha256: sha(1), Size: 10, FileName: "a.rpm", Replicas: []string{"c1"}, Name: "illumon-db", Version: "2.0"}, 300)
	p := a.f.Package(sha(1))
	if strings.Join(p.Replicas, ",") != "c1,c2,c3" || p.Name != "illumon-db" || p.Version != "2.0" || p.UploadedUnixMs != 100 || p.UploadedBy != "operator:alice" {
		t.Fatalf("package: %v", p)
	}
	if err, _ := add(&pb.Package{Sha256: sha(1), Size: 11, FileName: "a.rpm", Replicas: []string{"c1"}}, 400).(error); err == nil {
		t.Error("a package of another size under the same sha256 was accepted")
	}
	// The oldest go beyond MaxPackages, but not one an operation in
	// progress uses.
	op := &pb.Operation{Request: &pb.OpRequest{Action: ActUpgrade, Upgrade: &pb.UpgradeSpec{PackageSha256: sha(1)}},
		Stages: []*pb.Stage{{Steps: []*pb.Step{{Node: "n", Action: "install"}}}}}
	a.apply(&pb.Command{Cmd: &pb.Command_OpCreate{OpCreate: op}})
	for i := 2; i <= MaxPackages+2; i++ {
		add(&pb.Package{Sha256: sha(i), Size: 1, FileName: "b.rpm", Replicas: []string{"c1"}}, int64(1000+i))
	}
	if n := len(a.f.Packages()); n != MaxPackages {
		t.Errorf("%d packages kept, want %d", n, MaxPackages)
	}
	if a.f.Package(sha(1)) == nil || a.f.Package(sha(2)) != nil {
		t.Error("pruned the package in use, or kept the oldest unused one")
	}
	if err, _ := a.apply(&pb.Command{Cmd: &pb.Command_PackageRemove{PackageRemove: sha(1)}}).(error); err == nil {
		t.Error("removed the package of an upgrade in progress")
	}
	// Packages survive a snapshot.
	g := snapshotRestored(t, a.f)
	if len(g.Packages()) != MaxPackages || g.Package(sha(1)).Name != "illumon-db" {
		t.Errorf("restored packages: %v", g.Packages())
	}
}

func TestRevertUpgrade(t *testing.T) {
	a := &applier{t: t, f: New()}
	op := &pb.Operation{
		Request: &pb.OpRequest{Action: ActUpgrade, Upgrade: &pb.UpgradeSpec{PackageSha256: sha(2), AutoRevert: true, PreviousSha256: sha(1)}},
		Stages: []*pb.Stage{
			{Steps: []*pb.Step{{Node: "a", Action: "install"}, {Node: "b", Action: "install"}}},
			{Steps: []*pb.Step{{Node: "a", Action: "start", Services: []string{"s"}}}},
		},
	}
	res := a.apply(&pb.Command{Cmd: &pb.Command_OpCreate{OpCreate: op}})
	id := res.(*pb.Operation).Id
	a.apply(&pb.Command{Cmd: &pb.Command_StepUpdate{StepUpdate: &pb.StepUpdate{Ref: &pb.StepRef{OpId: id}, Step: &pb.Step{State: StepDone}}}})
	a.apply(&pb.Command{Cmd: &pb.Command_StepUpdate{StepUpdate: &pb.StepUpdate{Ref: &pb.StepRef{OpId: id, Step: 1}, Step: &pb.Step{State: StepFailed}}}})
	revert := &pb.UpgradeRevert{OpId: id, Reason: "install on b failed", Stages: []*pb.Stage{{Steps: []*pb.Step{{Node: "a", Action: "revert", State: StepDone}}}}}
	got, ok := a.apply(&pb.Command{Cmd: &pb.Command_UpgradeRevert{UpgradeRevert: revert}}).(*pb.Operation)
	if !ok {
		t.Fatal("revert refused")
	}
	if !got.Reverting || got.Failure != "install on b failed" || got.RevertFrom != 2 || len(got.Stages) != 3 {
		t.Fatalf("after revert: %v", got)
	}
	if s := got.Stages; s[0].Steps[0].State != StepDone || s[0].Steps[1].State != StepFailed || s[1].Steps[0].State != StepSkipped || s[2].Steps[0].State != StepPending {
		t.Errorf("step states: %v", got.Stages)
	}
	if err, _ := a.apply(&pb.Command{Cmd: &pb.Command_UpgradeRevert{UpgradeRevert: revert}}).(error); err == nil || !strings.Contains(err.Error(), "already reverting") {
		t.Errorf("a second revert: %v", err)
	}
	restart := a.apply(&pb.Command{Cmd: &pb.Command_OpCreate{OpCreate: newOp()}})
	if _, ok := restart.(error); !ok {
		t.Error("a second operation started while the upgrade reverts")
	}
}

type memSink struct{ bytes.Buffer }

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { return nil }
func (m *memSink) Close() error  { return nil }
