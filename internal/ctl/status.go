package ctl

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

func (o *options) statusCmd() *cobra.Command {
	var asJSON, local bool
	var node string
	cmd := &cobra.Command{
		Use:   "status [SERVICE...]",
		Short: "Show services: the whole cluster (from a coordinator, else the local agent's gossip), or this node (state, pid, uptime, restarts, CPU, memory, last check)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if !local && len(args) == 0 {
				if handled, err := o.coordinatorStatus(cmd.Context(), node, asJSON); handled {
					return err
				}
			}
			return o.call(cmd.Context(), 10*time.Second, func(ctx context.Context, c pb.AgentClient) error {
				if !local && len(args) == 0 {
					cl, err := c.Cluster(ctx, &pb.ClusterRequest{})
					if err != nil {
						return rpcError(err)
					}
					if cl.GossipEnabled && (node != cl.LocalNode || node == "") {
						return o.clusterStatus(ctx, c, node, asJSON)
					}
				}
				resp, err := c.Status(ctx, &pb.StatusRequest{Services: args})
				if err != nil {
					return rpcError(err)
				}
				bad, what := notOK(resp), fmt.Sprintf("of %d services not OK", len(resp.Services))
				if resp.StateError != "" {
					bad, what = bad+1, what+", and the agent starts none: "+resp.StateError
				}
				return o.show(resp, asJSON, func(w io.Writer, color bool) { renderStatus(w, resp, time.Now(), color) }, bad, what)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (the API's StatusResponse; for the cluster view the coordinator's StatusResponse or the agent's ClusterResponse)")
	cmd.Flags().BoolVar(&local, "local", false, "only this node, with CPU, memory and checks")
	cmd.Flags().StringVar(&node, "node", "", "only this node of the cluster")
	return cmd
}

// show prints resp as JSON or through render, and turns bad > 0 into exit
// status 1, which scripts and monitoring read as "not all OK".
func (o *options) show(resp proto.Message, asJSON bool, render func(w io.Writer, color bool), bad int, what string) error {
	if asJSON {
		if err := o.printJSON(resp); err != nil {
			return err
		}
	} else {
		render(o.out, isTerminal(o.out))
	}
	if bad > 0 {
		return &exitError{code: ExitNotOK, err: fmt.Errorf("%d %s", bad, what)}
	}
	return nil
}

func notOK(resp *pb.StatusResponse) int {
	n := 0
	for _, s := range resp.Services {
		if s.State != "OK" {
			n++
		}
	}
	return n
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func stateColor(state string) string {
	switch state {
	case "OK":
		return "\x1b[32m"
	case "Initializing", "Restarting", "Stopped", "Not monitored", "Waiting":
		return "\x1b[33m"
	}
	return "\x1b[31m"
}

func renderStatus(w io.Writer, resp *pb.StatusResponse, now time.Time, color bool) {
	ok := len(resp.Services) - notOK(resp)
	fmt.Fprintf(w, "Node %s (%s), dhagent %s: %d/%d services OK\n", resp.Node, strings.Join(resp.Roles, ", "), resp.AgentVersion, ok, len(resp.Services))
	if resp.StateError != "" {
		fmt.Fprintf(w, "NOT READY: no service is started until the agent can record it: %s\n", resp.StateError)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tSTATE\tPID\tUPTIME\tRESTARTS\tCPU\tMEMORY\tLAST CHECK")
	for _, s := range resp.Services {
		state := s.State
		if color {
			// Every state gets escape codes of one length, so the columns stay aligned.
			state = stateColor(s.State) + state + "\x1b[0m"
		}
		pid, uptime, cpu := "-", "-", "-"
		if s.Pid != 0 {
			pid = fmt.Sprint(s.Pid)
			cpu = fmt.Sprintf("%.1f%%", s.CpuPercent)
			if s.StartedUnixMs > 0 {
				uptime = humanDuration(now.Sub(time.UnixMilli(s.StartedUnixMs)))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", s.Name, state, pid, uptime, s.Restarts, cpu, humanBytes(s.MemoryBytes), lastCheck(s.LastCheck, now))
	}
	tw.Flush()
	var notes []string
	for _, s := range resp.Services {
		if c := s.Container; c != nil {
			notes = append(notes, fmt.Sprintf("  %s: container %s, image %s, id %s", s.Name, c.Name, c.Image, c.Id))
		}
		if s.State != "OK" && s.Message != "" {
			notes = append(notes, fmt.Sprintf("  %s: %s", s.Name, s.Message))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\n%s\n", strings.Join(notes, "\n"))
	}
}

func lastCheck(c *pb.CheckResult, now time.Time) string {
	if c == nil {
		return "-"
	}
	ago := humanDuration(now.Sub(time.UnixMilli(c.AtUnixMs)))
	msg := c.Message
	if len(msg) > 60 {
		msg = msg[:57] + "..."
	}
	return fmt.Sprintf("%s %s (%s ago)", c.Name, msg, ago)
}
