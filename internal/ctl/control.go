package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

type blockFlags struct {
	block   bool
	timeout time.Duration
}

func (b *blockFlags) add(cmd *cobra.Command, what string) {
	cmd.Flags().BoolVarP(&b.block, "block", "b", false, "wait until "+what)
	cmd.Flags().DurationVar(&b.timeout, "timeout", 10*time.Minute, "with --block, give up after this long")
}

func (b *blockFlags) validate() error {
	if b.timeout <= 0 {
		return fail(ExitError, "--timeout %s: expected a positive duration such as 90s or 10m", b.timeout)
	}
	return nil
}

// clusterActions are the controls that act cluster-wide through a coordinator.
var clusterActions = map[pb.Action]string{pb.Action_ACTION_START: "start", pb.Action_ACTION_STOP: "stop", pb.Action_ACTION_RESTART: "restart"}

func (o *options) controlCmd(name string, act pb.Action, short string) *cobra.Command {
	bf := blockFlags{timeout: time.Minute}
	var of opFlags
	var groups []string
	monitorOnly := act == pb.Action_ACTION_MONITOR || act == pb.Action_ACTION_UNMONITOR
	cmd := &cobra.Command{
		Use:   name + " SERVICE...|all|-g GROUP",
		Short: short,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && len(groups) == 0 {
				return fail(ExitError, "%s: name one or more services, or all, or a group with -g", name)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(groups) > 0 {
				members, err := o.groupMembers(cmd.Context(), groups)
				if err != nil {
					return err
				}
				args = append(args, members...)
			}
			if !monitorOnly {
				if err := bf.validate(); err != nil {
					return err
				}
				if handled, err := o.clusterOp(cmd, &of, clusterActions[act], args); handled {
					return err
				}
			}
			return o.stream(cmd.Context(), bf, func(ctx context.Context, c pb.AgentClient) (grpc.ServerStreamingClient[pb.Progress], error) {
				return c.Control(ctx, &pb.ControlRequest{Action: act, Services: args, Block: bf.block, TimeoutMs: bf.timeout.Milliseconds()})
			})
		},
	}
	cmd.Flags().StringSliceVarP(&groups, "group", "g", nil, "the services of this group (monit's group statement, groups: in agent.yaml); repeatable")
	if !monitorOnly {
		bf.add(cmd, "each service is OK (start, restart) or stopped (stop)")
		of.add(cmd)
	}
	return cmd
}

// groupMembers lists the local node's services in the groups, in its start
// order; a group no service is in is an error, as monit's is.
func (o *options) groupMembers(ctx context.Context, groups []string) ([]string, error) {
	c, closeConn, err := o.client(ctx)
	if err != nil {
		return nil, err
	}
	defer closeConn()
	resp, err := c.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return nil, rpcError(err)
	}
	var out []string
	for _, g := range groups {
		members := monitGroup(resp, g)
		if len(members) == 0 {
			return nil, fail(ExitError, "group %q: no service of this node is in it", g)
		}
		for _, m := range members {
			if !slices.Contains(out, m) {
				out = append(out, m)
			}
		}
	}
	return out, nil
}

func (o *options) orderCmd(name, short string) *cobra.Command {
	var bf blockFlags
	var of opFlags
	cmd := &cobra.Command{
		Use:   name,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := bf.validate(); err != nil {
				return err
			}
			action := "start"
			if name == "down" {
				action = "stop"
			}
			if handled, err := o.clusterOp(cmd, &of, action, nil); handled {
				return err
			}
			return o.stream(cmd.Context(), bf, func(ctx context.Context, c pb.AgentClient) (grpc.ServerStreamingClient[pb.Progress], error) {
				req := &pb.OrderRequest{Block: bf.block, TimeoutMs: bf.timeout.Milliseconds()}
				if name == "up" {
					return c.Up(ctx, req)
				}
				return c.Down(ctx, req)
			})
		},
	}
	bf.add(cmd, "every service is OK (up) or stopped (down)")
	of.add(cmd)
	return cmd
}

func (o *options) stream(ctx context.Context, bf blockFlags, call func(context.Context, pb.AgentClient) (grpc.ServerStreamingClient[pb.Progress], error)) error {
	c, closeConn, err := o.client(ctx)
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(ctx, bf.timeout+30*time.Second)
	defer cancel()
	st, err := call(ctx, c)
	if err != nil {
		return rpcError(err)
	}
	start := time.Now()
	failed := 0
	for {
		p, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return rpcError(err)
		}
		printProgress(o.out, p, time.Since(start))
		if p.Failed {
			failed++
		}
	}
	if failed > 0 {
		return fail(ExitNotOK, "%d service(s) did not reach their goal", failed)
	}
	return nil
}

func printProgress(w io.Writer, p *pb.Progress, elapsed time.Duration) {
	mark := "  "
	switch {
	case p.Failed:
		mark = "✗ "
	case p.Done:
		mark = "✓ "
	}
	fmt.Fprintf(w, "%6.1fs %s%-24s %-16s %s\n", elapsed.Seconds(), mark, p.Service, p.State, p.Message)
}

func (o *options) reloadCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "reload",
		Short: "Make the agent re-read its configuration (an invalid one is refused whole)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd.Context(), time.Minute, func(ctx context.Context, c pb.AgentClient) error {
				res, err := c.Reload(ctx, &pb.ReloadRequest{})
				if err != nil {
					e := rpcError(err)
					e.(*exitError).code = ExitError
					return e
				}
				fmt.Fprintln(o.out, "configuration reloaded")
				for _, l := range []struct {
					label string
					names []string
				}{{"added", res.Added}, {"removed", res.Removed}, {"changed", res.Changed}, {"restart to apply", res.RestartNeeded}} {
					if len(l.names) > 0 {
						fmt.Fprintf(o.out, "  %-17s %s\n", l.label+":", strings.Join(l.names, ", "))
					}
				}
				return nil
			})
		},
	}
}
