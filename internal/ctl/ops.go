package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// opFlags are the cluster-wide forms of start, stop, restart, up and down.
type opFlags struct {
	local            bool
	nodes, except    []string
	batchSize        int
	minHealthy       time.Duration
	healthyDeadline  time.Duration
	progressDeadline time.Duration
	onFailure        string
	dryRun, detach   bool
}

func (f *opFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVar(&f.local, "local", false, "act on this node only, through its agent, even when coordinators are known")
	fl.StringSliceVar(&f.except, "except", nil, "cluster: leave these services out (e.g. iris_controller,db_query_server)")
	fl.IntVar(&f.batchSize, "batch-size", 0, "cluster: nodes acted on at once within a stage (0: all)")
	f.addGate(cmd)
}

// addGate adds the flags every cluster-wide operation has: where, the
// health gate, what to do on failure, and how to follow it.
func (f *opFlags) addGate(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringSliceVar(&f.nodes, "node", nil, "cluster: only these nodes (repeatable)")
	fl.DurationVar(&f.minHealthy, "min-healthy-time", 0, "cluster: how long services must stay OK before the next stage (default: the coordinator's, 10s)")
	fl.DurationVar(&f.healthyDeadline, "healthy-deadline", 0, "cluster: a step must be healthy within this (default: the coordinator's, 5m)")
	fl.DurationVar(&f.progressDeadline, "progress-deadline", 0, "cluster: the operation fails if no step completes within this (default 10m)")
	fl.StringVar(&f.onFailure, "on-failure", "pause", "cluster: pause or abort when a step fails")
	fl.BoolVar(&f.dryRun, "dry-run", false, "cluster: print the plan and do nothing")
	fl.BoolVar(&f.detach, "detach", false, "cluster: start the operation and return; follow it with `dhctl ops show ID --follow`")
}

func (f *opFlags) request(action string, services []string, label string) (*pb.OpRequest, error) {
	if f.batchSize < 0 {
		return nil, fail(ExitError, "--batch-size %d: expected 0 (all at once) or more", f.batchSize)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--min-healthy-time", f.minHealthy}, {"--healthy-deadline", f.healthyDeadline}, {"--progress-deadline", f.progressDeadline}} {
		if d.v < 0 {
			return nil, fail(ExitError, "%s %s: expected a duration such as 10s", d.name, d.v)
		}
	}
	if f.onFailure != "pause" && f.onFailure != "abort" {
		return nil, fail(ExitError, "--on-failure %q: expected pause or abort", f.onFailure)
	}
	return &pb.OpRequest{
		Action: action, Services: services, Nodes: f.nodes, Except: f.except, BatchSize: int32(f.batchSize),
		MinHealthyTimeMs: f.minHealthy.Milliseconds(), HealthyDeadlineMs: f.healthyDeadline.Milliseconds(),
		ProgressDeadlineMs: f.progressDeadline.Milliseconds(), OnFailure: f.onFailure, Label: label,
	}, nil
}

// clusterOp runs a cluster-wide operation when coordinators are known. It
// returns handled=false when there are none (or --local): the caller then
// acts on the local node.
func (o *options) clusterOp(cmd *cobra.Command, f *opFlags, action string, services []string) (handled bool, err error) {
	if f.local {
		return false, nil
	}
	ctx := cmd.Context()
	c, closeConn, found, err := o.coordClient(ctx)
	if err != nil || !found {
		if !found && (f.dryRun || len(f.nodes) > 0 || len(f.except) > 0) {
			return true, fail(ExitError, "--dry-run, --node and --except need a coordinator; none found (see --config, --coordinator)")
		}
		return found, err
	}
	defer closeConn()
	label := strings.TrimSpace(cmd.Name() + " " + strings.Join(services, " "))
	req, err := f.request(action, services, label)
	if err != nil {
		return true, err
	}
	return true, o.startOp(ctx, c, f, req)
}

// startOp prints the plan (--dry-run), or starts the operation and follows
// it unless --detach.
func (o *options) startOp(ctx context.Context, c pb.CoordinatorClient, f *opFlags, req *pb.OpRequest) error {
	label := req.Label
	if f.dryRun {
		op, err := c.Plan(ctx, req)
		if err != nil {
			return rpcError(err)
		}
		fmt.Fprintf(o.out, "plan for %s (nothing done):\n", label)
		renderOp(o.out, op, time.Now(), false)
		return nil
	}
	op, err := c.StartOp(ctx, req)
	if err != nil {
		return rpcError(err)
	}
	if f.detach {
		fmt.Fprintf(o.out, "%s started: %s; follow it with `dhctl %s %s --follow`\n", op.Id, label, showCommand(op), op.Id)
		return nil
	}
	return o.follow(ctx, c, op.Id)
}

// showCommand is how an operator looks at op.
func showCommand(op *pb.Operation) string {
	if op.GetRequest().GetAction() == "upgrade" {
		return "upgrade status"
	}
	return "ops show"
}

// follow shows an operation live until it ends. Interrupting dhctl leaves
// the operation running.
func (o *options) follow(ctx context.Context, c pb.CoordinatorClient, id string) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	for {
		op, err := o.followOnce(ctx, c, id)
		switch {
		case ctx.Err() != nil:
			fmt.Fprintf(o.out, "\n%s continues without dhctl; `dhctl ops show %s --follow` to watch it again\n", id, id)
			return fail(ExitNotOK, "stopped following %s", id)
		case err == nil:
			return opResult(op)
		case status.Code(err) == codes.Unavailable:
			// The replica answering went away (a coordinator restart):
			// the client moves to another; carry on watching.
			time.Sleep(500 * time.Millisecond)
		default:
			return rpcError(err)
		}
		if op != nil {
			id = op.Id
		}
	}
}

// followOnce watches until the operation ends (returning its last state) or
// the stream breaks.
func (o *options) followOnce(ctx context.Context, c pb.CoordinatorClient, id string) (*pb.Operation, error) {
	stream, err := c.WatchOp(ctx, &pb.GetOpRequest{Id: id})
	if err != nil {
		return nil, err
	}
	tty := isTerminal(o.out)
	drawn := 0
	var last *pb.Operation
	for {
		op, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return last, nil
		}
		if err != nil {
			return last, err
		}
		if tty {
			if drawn > 0 {
				fmt.Fprintf(o.out, "\x1b[%dA\x1b[J", drawn)
			}
			var b strings.Builder
			renderOp(&b, op, time.Now(), true)
			drawn = strings.Count(b.String(), "\n")
			io.WriteString(o.out, b.String())
		} else {
			printChanges(o.out, last, op)
		}
		last = op
	}
}

func opResult(op *pb.Operation) error {
	if op == nil {
		return nil
	}
	if op.State == "done" {
		return nil
	}
	return fail(ExitNotOK, "%s %s: %s", op.Id, op.State, op.Message)
}

// printChanges writes one line per step that changed, for logs and pipes.
func printChanges(w io.Writer, prev, op *pb.Operation) {
	if prev == nil {
		fmt.Fprintf(w, "%s %s: %d stages, by %s\n", op.Id, op.Title(), len(op.Stages), op.CreatedBy)
		for _, s := range op.Skipped {
			fmt.Fprintf(w, "  skipped %s\n", s)
		}
	}
	for i, st := range op.Stages {
		for j, s := range st.Steps {
			var was *pb.Step
			if prev != nil && i < len(prev.Stages) && j < len(prev.Stages[i].Steps) {
				was = prev.Stages[i].Steps[j]
			}
			if was != nil && was.State == s.State && was.OkUnixMs == s.OkUnixMs && was.Attempts == s.Attempts {
				continue
			}
			if was == nil && s.State == "pending" {
				continue
			}
			fmt.Fprintf(w, "%s stage %d: %s %s on %s: %s%s\n", time.Now().Format("15:04:05.000"), i+1, s.Action, stepWhat(s), s.Node, stepWord(s), suffix(s.Message))
		}
	}
	if prev == nil || prev.State != op.State {
		fmt.Fprintf(w, "%s %s%s\n", op.Id, op.State, suffix(op.Message))
	}
}

func suffix(msg string) string {
	if msg == "" {
		return ""
	}
	return ": " + msg
}

func stepWord(s *pb.Step) string {
	if s.State == "running" && s.OkUnixMs > 0 {
		return "OK, holding"
	}
	return s.State
}

// renderOp draws an operation: a header, then each stage's steps.
func renderOp(w io.Writer, op *pb.Operation, now time.Time, color bool) {
	if op.Id != "" {
		took := ""
		if op.CreatedUnixMs > 0 {
			end := now
			if op.EndedUnixMs > 0 {
				end = time.UnixMilli(op.EndedUnixMs)
			}
			took = " · " + humanDuration(end.Sub(time.UnixMilli(op.CreatedUnixMs)))
		}
		fmt.Fprintf(w, "%s  %s  %s  by %s%s\n", op.Id, op.Title(), paint(color, opColor(op.State), op.State), op.CreatedBy, took)
		if op.Message != "" {
			fmt.Fprintf(w, "  %s\n", op.Message)
		}
	}
	r := op.Request
	if r != nil {
		fmt.Fprintf(w, "  health gate: OK for %v within %v per step; on failure %s\n", time.Duration(r.MinHealthyTimeMs)*time.Millisecond, time.Duration(r.HealthyDeadlineMs)*time.Millisecond, r.OnFailure)
	}
	if r.GetUpgrade() != nil {
		renderUpgrade(w, op, now, color)
	}
	for i, st := range op.Stages {
		for j, s := range st.Steps {
			stage := ""
			if j == 0 {
				stage = fmt.Sprintf("stage %d", i+1)
			}
			mark, state := stepMark(s), stepWord(s)
			detail := ""
			switch {
			case s.EndedUnixMs > 0 && s.StartedUnixMs > 0:
				detail = fmt.Sprintf("%.1fs", float64(s.EndedUnixMs-s.StartedUnixMs)/1000)
			case s.StartedUnixMs > 0:
				detail = fmt.Sprintf("%.1fs", now.Sub(time.UnixMilli(s.StartedUnixMs)).Seconds())
			}
			if s.Attempts > 1 {
				detail += fmt.Sprintf(" (attempt %d)", s.Attempts)
			}
			if s.Message != "" && s.State != "done" {
				detail += " " + s.Message
			}
			fmt.Fprintf(w, "  %-8s %s %-16s %-8s %-52s %s %s\n", stage, paint(color, stepColor(s.State), mark), s.Node, s.Action, stepWhat(s), paint(color, stepColor(s.State), state), detail)
			if s.State == "failed" && s.Output != "" {
				for _, line := range lastLines(s.Output, 10) {
					fmt.Fprintf(w, "  %-8s   | %s\n", "", line)
				}
			}
		}
	}
	for _, s := range op.Skipped {
		fmt.Fprintf(w, "  skipped  %s\n", s)
	}
}

func stepCounts(op *pb.Operation) (done, all int) {
	for _, st := range op.Stages {
		for _, s := range st.Steps {
			all++
			if s.State == "done" || s.State == "skipped" {
				done++
			}
		}
	}
	return done, all
}

// stepWhat is what a step acts on: its services, or for an install the
// versions.
func stepWhat(s *pb.Step) string {
	if len(s.Services) > 0 {
		return strings.Join(s.Services, ",")
	}
	switch {
	case s.VersionAfter != "":
		return dashIfNone(s.VersionBefore) + " -> " + s.VersionAfter
	case s.PackagePath != "":
		return s.PackagePath
	case s.Package != "":
		return "package " + s.Package[:min(12, len(s.Package))]
	}
	return ""
}

func dashIfNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func lastLines(s string, n int) []string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

func stepMark(s *pb.Step) string {
	switch s.State {
	case "done":
		return "✓"
	case "failed":
		return "✗"
	case "running":
		return "▶"
	}
	return "·"
}

func paint(color bool, code, s string) string {
	if !color || code == "" {
		return s
	}
	return "\x1b[" + code + "m" + s + "\x1b[0m"
}

func stepColor(state string) string {
	switch state {
	case "done":
		return "32"
	case "failed":
		return "31"
	case "running":
		return "33"
	}
	return ""
}

func opColor(state string) string {
	switch state {
	case "done":
		return "32"
	case "running":
		return "33"
	}
	return "31"
}

func (o *options) opsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ops", Short: "Cluster-wide operations: list, show (--follow), pause, resume, abort"}
	var limit int
	list := &cobra.Command{
		Use: "list", Short: "Recent operations, newest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.callCoord(cmd.Context(), 10*time.Second, func(ctx context.Context, c pb.CoordinatorClient) error {
				resp, err := c.ListOps(ctx, &pb.ListOpsRequest{Limit: int32(limit)})
				if err != nil {
					return rpcError(err)
				}
				fmt.Fprintf(o.out, "%-10s %-30s %-8s %-7s %-20s %s\n", "ID", "WHAT", "STATE", "STEPS", "STARTED", "BY")
				for _, op := range resp.Ops {
					done, all := stepCounts(op)
					fmt.Fprintf(o.out, "%-10s %-30s %-8s %-7s %-20s %s\n", op.Id, op.Title(), op.State, fmt.Sprintf("%d/%d", done, all), time.UnixMilli(op.CreatedUnixMs).Format("2006-01-02 15:04:05"), op.CreatedBy)
				}
				return nil
			})
		},
	}
	list.Flags().IntVar(&limit, "limit", 20, "how many")
	var followFlag bool
	show := &cobra.Command{
		Use: "show [ID]", Short: "An operation's plan and progress (default: the newest)", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			if followFlag {
				return o.withCoord(cmd.Context(), func(ctx context.Context, c pb.CoordinatorClient) error { return o.follow(ctx, c, id) })
			}
			return o.callCoord(cmd.Context(), 10*time.Second, func(ctx context.Context, c pb.CoordinatorClient) error {
				op, err := c.GetOp(ctx, &pb.GetOpRequest{Id: id})
				if err != nil {
					return rpcError(err)
				}
				renderOp(o.out, op, time.Now(), isTerminal(o.out))
				return nil
			})
		},
	}
	show.Flags().BoolVarP(&followFlag, "follow", "f", false, "keep showing progress until the operation ends")
	control := func(name string, op pb.ControlOpRequest_Op, short string) *cobra.Command {
		return o.opControlCmd(name+" ID", short, exactArgs(1, "the operation's ID (see dhctl ops list)"), op,
			func(_ context.Context, _ pb.CoordinatorClient, args []string) (string, error) { return args[0], nil })
	}
	cmd.AddCommand(list, show,
		control("pause", pb.ControlOpRequest_OP_PAUSE, "Pause: running steps finish, no new stage starts"),
		control("resume", pb.ControlOpRequest_OP_RESUME, "Resume a paused operation; failed steps are tried again"),
		control("abort", pb.ControlOpRequest_OP_ABORT, "Abort: running steps finish, nothing else is done"),
	)
	return cmd
}

// opControlCmd is a command that pauses, resumes or aborts the operation id
// picks from the arguments.
func (o *options) opControlCmd(use, short string, args cobra.PositionalArgs, op pb.ControlOpRequest_Op, id func(context.Context, pb.CoordinatorClient, []string) (string, error)) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short, Args: args,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.callCoord(cmd.Context(), 30*time.Second, func(ctx context.Context, c pb.CoordinatorClient) error {
				opID, err := id(ctx, c, args)
				if err != nil {
					return err
				}
				res, err := c.ControlOp(ctx, &pb.ControlOpRequest{Id: opID, Op: op})
				if err != nil {
					return rpcError(err)
				}
				fmt.Fprintf(o.out, "%s %s\n", res.Id, res.State)
				return nil
			})
		},
	}
}
