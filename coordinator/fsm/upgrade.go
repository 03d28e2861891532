package fsm

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/internal/pkgsig"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// ActUpgrade is the action of an upgrade operation.
const ActUpgrade = "upgrade"

// StepSkipped is a step an upgrade left undone when it turned to revert.
const StepSkipped = "skipped"

// StepFinished reports whether a step needs nothing more.
func StepFinished(state string) bool { return state == StepDone || state == StepSkipped }

// MaxPackages bounds the packages recorded; the oldest one no operation
// in progress uses goes first.
const MaxPackages = 8

var shaRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Packages returns copies of the recorded packages, newest first.
func (f *FSM) Packages() []*pb.Package {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*pb.Package, 0, len(f.st.Packages))
	for _, p := range f.st.Packages {
		out = append(out, proto.Clone(p).(*pb.Package))
	}
	slices.SortFunc(out, func(a, b *pb.Package) int {
		if a.UploadedUnixMs != b.UploadedUnixMs {
			return int(b.UploadedUnixMs - a.UploadedUnixMs)
		}
		return strings.Compare(a.Sha256, b.Sha256)
	})
	return out
}

// PackageSums returns the set of the recorded packages' SHA-256 sums.
func (f *FSM) PackageSums() map[string]bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]bool, len(f.st.Packages))
	for sha := range f.st.Packages {
		out[sha] = true
	}
	return out
}

// Package returns a copy of one package's record, or nil.
func (f *FSM) Package(sha string) *pb.Package {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return cloneOrNil(f.st.Packages[sha])
}

// ValidSHA256 says whether s is a sha256 as packages are named: 64
// lowercase hex digits.
func ValidSHA256(s string) bool { return shaRE.MatchString(s) }

// ShortSHA is the first 12 hex digits, as operators see a package.
func ShortSHA(sha string) string { return sha[:min(12, len(sha))] }

// addPackage records a package or, for one already recorded, adds holders
// and what an install learned (name, version).
func (f *FSM) addPackage(at int64, who string, p *pb.Package) (any, string) {
	what := fmt.Sprintf("package %s (%s)", p.FileName, ShortSHA(p.Sha256))
	switch {
	case !shaRE.MatchString(p.Sha256):
		return rejected("sha256 %q: expected 64 lowercase hex digits", p.Sha256), what
	case p.Size <= 0:
		return rejected("size %d: must be positive", p.Size), what
	case p.FileName == "" || strings.ContainsAny(p.FileName, "/\x00"):
		return rejected("file_name %q: expected a plain file name", p.FileName), what
	case len(p.Replicas) == 0:
		return rejected("no coordinator holds the package"), what
	case len(p.Signature) > pkgsig.MaxSignature:
		return rejected("signature: %d bytes, at most %d", len(p.Signature), pkgsig.MaxSignature), what
	}
	if cur := f.st.Packages[p.Sha256]; cur != nil {
		if cur.Size != p.Size {
			return rejected("package %s is recorded with size %d, not %d", ShortSHA(p.Sha256), cur.Size, p.Size), what
		}
		added := false
		for _, r := range p.Replicas {
			if !slices.Contains(cur.Replicas, r) {
				cur.Replicas, added = append(cur.Replicas, r), true
			}
		}
		slices.Sort(cur.Replicas)
		if len(cur.Signature) == 0 && len(p.Signature) > 0 {
			// Uploaded again with the signature it lacked.
			cur.Signature = p.Signature
			return proto.Clone(cur), what + " now has a signature"
		}
		if cur.Name == "" && p.Name != "" {
			cur.Name, cur.Version = p.Name, p.Version
			return proto.Clone(cur), fmt.Sprintf("%s is %s %s", what, p.Name, p.Version)
		}
		if !added {
			return proto.Clone(cur), "" // an upload of a package already held everywhere
		}
		return proto.Clone(cur), fmt.Sprintf("%s now held by %s", what, strings.Join(cur.Replicas, ","))
	}
	next := proto.Clone(p).(*pb.Package)
	next.UploadedBy, next.UploadedUnixMs = who, at
	slices.Sort(next.Replicas)
	f.st.Packages[p.Sha256] = next
	f.prunePackages()
	return proto.Clone(next), fmt.Sprintf("%s uploaded: %d bytes, sha256 %s, held by %s", what, p.Size, p.Sha256, strings.Join(next.Replicas, ","))
}

// prunePackages keeps MaxPackages, dropping the oldest that no operation in
// progress uses.
func (f *FSM) prunePackages() {
	inUse := map[string]bool{}
	if a := f.activeOp(); a != nil {
		if u := a.Request.GetUpgrade(); u != nil {
			inUse[u.PackageSha256], inUse[u.PreviousSha256] = true, true
		}
	}
	for len(f.st.Packages) > MaxPackages {
		var oldest *pb.Package
		for _, k := range slices.Sorted(maps.Keys(f.st.Packages)) {
			p := f.st.Packages[k]
			if !inUse[k] && (oldest == nil || p.UploadedUnixMs < oldest.UploadedUnixMs) {
				oldest = p
			}
		}
		if oldest == nil {
			return
		}
		delete(f.st.Packages, oldest.Sha256)
	}
}

func (f *FSM) removePackage(sha string) (any, string) {
	what := "package " + ShortSHA(sha) + " removed"
	if a := f.activeOp(); a != nil {
		if u := a.Request.GetUpgrade(); u != nil && (u.PackageSha256 == sha || u.PreviousSha256 == sha) {
			return rejected("operation %s (%s) uses it", a.Id, a.State), what
		}
	}
	if f.st.Packages[sha] == nil {
		return rejected("no package %s", ShortSHA(sha)), what
	}
	delete(f.st.Packages, sha)
	return nil, what
}

// revertUpgrade turns a failed upgrade to putting the previous package
// back: the steps it had not finished are skipped, the revert stages are
// appended, and the operation will end failed with the reason.
func (f *FSM) revertUpgrade(at int64, r *pb.UpgradeRevert) (any, string) {
	what := fmt.Sprintf("%s reverting: %s", r.OpId, r.Reason)
	op := f.findOp(r.OpId)
	switch {
	case op == nil:
		return rejected("no operation %s", r.OpId), what
	case op.Request.GetAction() != ActUpgrade || !op.Request.GetUpgrade().GetAutoRevert():
		return rejected("operation %s is not an upgrade with auto_revert", r.OpId), what
	case op.Reverting:
		return rejected("operation %s is already reverting", r.OpId), what
	case op.State != OpRunning:
		return rejected("operation %s is %s", r.OpId, op.State), what
	}
	for _, st := range op.Stages {
		for _, s := range st.Steps {
			if s.State == StepPending || s.State == StepRunning {
				s.State = StepSkipped
			}
		}
	}
	op.Reverting, op.Failure, op.RevertFrom = true, r.Reason, int32(len(op.Stages))
	for _, st := range r.Stages {
		st = proto.Clone(st).(*pb.Stage)
		for _, s := range st.Steps {
			s.State = StepPending
		}
		op.Stages = append(op.Stages, st)
	}
	op.UpdatedUnixMs = at
	return proto.Clone(op), fmt.Sprintf("%s (%d stages)", what, len(r.Stages))
}
