package ops

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// errNodeDown is the cause of a step cancelled because its node died.
var errNodeDown = errors.New("node down")

// watchNode cancels ctx (with errNodeDown) when node is dead or left, until
// the returned function is called.
func (e *Engine) watchNode(ctx context.Context, node string, cancel context.CancelCauseFunc) func() {
	changed, unsubscribe := e.Health.Subscribe()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if st := e.Health.NodeState(node); st == "dead" || st == "left" {
				cancel(fmt.Errorf("%w: node %s is %s (it died during the step)", errNodeDown, node, st))
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-stop:
				return
			case _, ok := <-changed:
				if !ok {
					return
				}
			}
		}
	}()
	return func() {
		close(stop)
		<-done
		unsubscribe()
	}
}

// prefetch has every node whose install is still to come fetch the package
// (or copy it from the path on the node) into its cache now, while its
// services run, so the install steps (in a full upgrade, the cluster's
// downtime) do not wait for the transfer. It is best effort: an
// install step fetches whatever is missing. The returned function stops it.
func (e *Engine) prefetch(ctx context.Context, op *pb.Operation) func() {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	seen := map[string]bool{}
	for _, st := range op.Stages[:revertEnd(op)] {
		for _, s := range st.Steps {
			if s.Action != ActInstall || fsm.StepFinished(s.State) || seen[s.Node] {
				continue
			}
			seen[s.Node] = true
			ref, err := e.packageRef(s)
			if err != nil {
				continue // the install step reports it
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := e.Agents.Install(ctx, s.Node, &agentpb.InstallRequest{Package: ref, FetchOnly: true})
				switch {
				case err != nil && ctx.Err() == nil:
					e.Log.Info("prefetching the package; the install step will fetch it", "node", s.Node, "err", err)
				case err == nil && res.Failed:
					e.Log.Info("prefetching the package; the install step will fetch it", "node", s.Node, "err", res.Message)
				}
			}()
		}
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// install sends an install or revert step to the node's agent, retrying
// while it cannot be reached (an agent restarting: the step's token makes
// a repeat wait for, or return, what was done).
func (e *Engine) install(ctx context.Context, s *pb.Step, token string) (*agentpb.InstallResult, error) {
	ref, err := e.packageRef(s)
	if err != nil {
		return nil, err
	}
	var res *agentpb.InstallResult
	err = e.callAgent(ctx, s, "no progress within the progress deadline", func(timeoutMs int64) error {
		var err error
		res, err = e.Agents.Install(ctx, s.Node, &agentpb.InstallRequest{OpToken: token, Package: ref, ExpectVersion: s.ExpectVersion, TimeoutMs: timeoutMs})
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// packageRef tells the agent where the step's package is: a path on the
// node, or the coordinators that hold it.
func (e *Engine) packageRef(s *pb.Step) (*agentpb.PackageRef, error) {
	if s.PackagePath != "" {
		return &agentpb.PackageRef{Path: s.PackagePath, Sha256: s.Package}, nil
	}
	p := e.FSM.Package(s.Package)
	if p == nil {
		return nil, fmt.Errorf("package %s is no longer recorded (removed?)", fsm.ShortSHA(s.Package))
	}
	ref := &agentpb.PackageRef{Sha256: p.Sha256, Size: p.Size, FileName: p.FileName, Signature: p.Signature}
	for _, id := range p.Replicas {
		if peer := e.FSM.Peer(id); peer != nil && peer.ApiAddr != "" {
			ref.Sources = append(ref.Sources, peer.ApiAddr)
		}
	}
	if len(ref.Sources) == 0 {
		return nil, fmt.Errorf("no coordinator holding package %s (%s) has published its address", fsm.ShortSHA(p.Sha256), strings.Join(p.Replicas, ", "))
	}
	return ref, nil
}

// learnPackage records what an install found the package to be, once.
func (e *Engine) learnPackage(ctx context.Context, sha string, res *agentpb.InstallResult) {
	p := e.FSM.Package(sha)
	if p == nil || p.Name != "" || res.Package == "" {
		return
	}
	p.Name, p.Version = res.Package, res.Version
	if _, err := e.propose(ctx, &pb.Command{Cmd: &pb.Command_PackageAdd{PackageAdd: p}}); err != nil && ctx.Err() == nil {
		e.Log.Warn("recording the package's name and version", "err", err)
	}
}

// revert turns the failed upgrade to putting the previous package back.
func (e *Engine) revert(ctx context.Context, id, reason string) error {
	op, ok := e.FSM.Op(id)
	if !ok {
		return nil
	}
	stages := RevertStages(op)
	e.Log.Warn("upgrade failed; reverting", "op", id, "reason", reason, "stages", len(stages))
	_, err := e.propose(ctx, &pb.Command{Cmd: &pb.Command_UpgradeRevert{UpgradeRevert: &pb.UpgradeRevert{OpId: id, Reason: reason, Stages: stages}}})
	return err
}

func installMessage(res *agentpb.InstallResult) string {
	switch {
	case res.Repeated:
		return fmt.Sprintf("%s %s installed earlier in this step (before: %s)", res.Package, res.After, dashIfEmpty(res.Before))
	case res.Unchanged:
		return fmt.Sprintf("%s %s was already installed", res.Package, res.After)
	case res.Message != "":
		return fmt.Sprintf("%s %s over %s: %s", res.Package, res.After, dashIfEmpty(res.Before), res.Message)
	}
	return fmt.Sprintf("%s %s over %s", res.Package, res.After, dashIfEmpty(res.Before))
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "nothing"
	}
	return s
}

// outputTail is the end of a package tool's output, for a failure message:
// the lines that say what went wrong.
func outputTail(out string) string {
	out = strings.TrimSpace(out)
	if out == "" {
		return ""
	}
	lines := strings.Split(out, "\n")
	if len(lines) > 6 {
		lines = lines[len(lines)-6:]
	}
	return "; the tool said: " + strings.Join(lines, " | ")
}

// revertedMessage ends an upgrade that reverted: what failed, and where the
// previous package is back.
func revertedMessage(op *pb.Operation) string {
	var nodes []string
	for _, st := range op.Stages[op.RevertFrom:] {
		for _, s := range st.Steps {
			if s.Action == ActRevert { // one a node (RevertStages)
				nodes = append(nodes, s.Node+" ("+s.VersionAfter+")")
			}
		}
	}
	return fmt.Sprintf("%s; reverted: the previous package is back on %s and every service restarted", op.Failure, strings.Join(nodes, ", "))
}

// upgradedMessage ends an upgrade that completed: the versions each node
// went from and to.
func upgradedMessage(op *pb.Operation) string {
	moves := map[string][]string{}
	var order []string
	for _, st := range op.Stages {
		for _, s := range st.Steps {
			if s.Action != ActInstall {
				continue
			}
			m := dashIfEmpty(s.VersionBefore) + " -> " + s.VersionAfter
			if _, ok := moves[m]; !ok {
				order = append(order, m)
			}
			moves[m] = append(moves[m], s.Node)
		}
	}
	var parts []string
	for _, m := range order {
		parts = append(parts, fmt.Sprintf("%s: %s", strings.Join(moves[m], ","), m))
	}
	return "upgraded " + strings.Join(parts, "; ")
}
