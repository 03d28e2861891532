package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/envoybootstrap"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func (o *options) envoyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "envoy", Short: "Envoy in front of the cluster: the container on this node (status, restart, logs) and its bootstrap"}
	var opts envoybootstrap.Options
	var xds []string
	boot := &cobra.Command{
		Use:   "bootstrap",
		Short: "Print the Envoy bootstrap YAML of Deephaven's Envoy guide, with every coordinator as an xDS endpoint",
		Long: `Print the Envoy bootstrap YAML of Deephaven's Envoy guide: CDS and RDS
(rds_config) from the xds_service cluster, whose endpoints are every
coordinator's xDS address (asked of the coordinators, or --xds), with
initial_fetch_timeout 0s so Envoy serves at once; a listener with websocket
upgrades. Paths are as Envoy sees them, inside its container.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(xds) == 0 {
				err := o.callCoord(cmd.Context(), 10*time.Second, func(ctx context.Context, c pb.CoordinatorClient) error {
					resp, err := c.Peers(ctx, &pb.PeersRequest{})
					if err != nil {
						return rpcError(err)
					}
					for _, p := range resp.Peers {
						if p.Peer.XdsAddr == "" {
							return fail(ExitError, "coordinator %s has not published its xDS address (is it older than this dhctl?); list them with --xds", p.Peer.Id)
						}
						xds = append(xds, p.Peer.XdsAddr)
					}
					return nil
				})
				if err != nil {
					return err
				}
			}
			opts.Coordinators = xds
			out, err := envoybootstrap.Render(opts)
			if err != nil {
				return fail(ExitError, "%v", err)
			}
			_, err = o.out.Write(out)
			return err
		},
	}
	f := boot.Flags()
	f.StringSliceVar(&xds, "xds", nil, "coordinator xDS addresses host:port (repeatable; default: asked of the coordinators)")
	f.StringVar(&opts.NodeID, "node-id", "", "Envoy's node id (default: this host's name)")
	f.StringVar(&opts.NodeCluster, "node-cluster", "", "Envoy's node cluster (default deephaven)")
	f.StringVar(&opts.Admin, "admin", "", "admin interface host:port (default 127.0.0.1:8001)")
	f.StringVar(&opts.Listen, "listen", "", "listener host:port (default 0.0.0.0:8000)")
	f.BoolVar(&opts.Plaintext, "plaintext", false, "speak xDS without TLS (coordinators with envoy.xds.plaintext: true)")
	f.StringVar(&opts.XDSTLS.CA, "ca", "/etc/dhvisor/tls/ca.pem", "the cluster CA, for xDS over mutual TLS")
	f.StringVar(&opts.XDSTLS.Cert, "cert", "/etc/dhvisor/tls/agent.pem", "the node's agent certificate, for xDS over mutual TLS")
	f.StringVar(&opts.XDSTLS.Key, "key", "/etc/dhvisor/tls/agent-key.pem", "its key")
	f.StringVar(&opts.ServerCert, "server-cert", config.EnvoyServerCertPath, "the certificate chain Envoy presents to clients")
	f.StringVar(&opts.ServerKey, "server-key", config.EnvoyServerKeyPath, "its key")
	f.BoolVar(&opts.ListenerPlaintext, "listener-plaintext", false, "serve the listener without TLS (TLS terminated in front of Envoy)")
	cmd.AddCommand(boot, o.envoyStatusCmd(), o.envoyRestartCmd(), o.envoyLogsCmd())
	return cmd
}

func (o *options) envoyStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "The Envoy container on this node: state, container id, image, uptime, restarts, readiness (exit 1 unless OK)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd.Context(), 10*time.Second, func(ctx context.Context, c agentpb.AgentClient) error {
				resp, err := c.Status(ctx, &agentpb.StatusRequest{Services: []string{config.EnvoyService}})
				if err != nil {
					return envoyRPCError(err)
				}
				return o.show(resp, asJSON, func(w io.Writer, color bool) { renderEnvoy(w, resp, time.Now(), color) },
					notOK(resp), "Envoy container not OK")
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the agent's StatusResponse as JSON")
	return cmd
}

func (o *options) envoyRestartCmd() *cobra.Command {
	bf := blockFlags{timeout: time.Minute}
	cmd := &cobra.Command{
		Use:   "restart",
		Short: "Restart the Envoy container on this node (docker restart, under the agent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := bf.validate(); err != nil {
				return err
			}
			return o.stream(cmd.Context(), bf, func(ctx context.Context, c agentpb.AgentClient) (grpc.ServerStreamingClient[agentpb.Progress], error) {
				return c.Control(ctx, &agentpb.ControlRequest{Action: agentpb.Action_ACTION_RESTART, Services: []string{config.EnvoyService}, Block: bf.block, TimeoutMs: bf.timeout.Milliseconds()})
			})
		},
	}
	bf.add(cmd, "Envoy is ready again")
	return cmd
}

func (o *options) envoyLogsCmd() *cobra.Command {
	var follow, all bool
	var tail int32
	cmd := &cobra.Command{
		Use:   "logs",
		Short: "The Envoy container's output (docker logs), -f to follow",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tail < 0 {
				return fail(ExitError, "--tail %d: expected 0 or more lines", tail)
			}
			c, closeConn, err := o.client(cmd.Context())
			if err != nil {
				return err
			}
			defer closeConn()
			st, err := c.Logs(cmd.Context(), &agentpb.LogsRequest{Service: config.EnvoyService, Tail: tail, All: all, Follow: follow})
			if err != nil {
				return envoyRPCError(err)
			}
			for {
				chunk, err := st.Recv()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					if cmd.Context().Err() != nil {
						return nil // interrupted while following
					}
					return envoyRPCError(err)
				}
				if _, err := o.out.Write(chunk.Data); err != nil {
					return err
				}
			}
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	f.Int32Var(&tail, "tail", 100, "print the last this many lines")
	f.BoolVar(&all, "all", false, "print every line the engine kept")
	return cmd
}

// envoyRPCError says plainly that the node runs no Envoy: the agent
// answers NotFound for a service it does not run.
func envoyRPCError(err error) error {
	if status.Code(err) == codes.NotFound {
		return fail(ExitError, "this node runs no Envoy container (its agent.yaml has no envoy role)")
	}
	return rpcError(err)
}

func renderEnvoy(w io.Writer, resp *agentpb.StatusResponse, now time.Time, color bool) {
	s := resp.Services[0]
	state := s.State
	if color {
		state = stateColor(s.State) + state + "\x1b[0m"
	}
	fmt.Fprintf(w, "Envoy on %s: %s for %s\n", resp.Node, state, humanDuration(now.Sub(time.UnixMilli(s.StateSinceUnixMs))))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "  %s\t%s\n", k, v) }
	if c := s.Container; c != nil {
		row("container", c.Name+" "+c.Id)
		row("image", c.Image)
	} else {
		row("container", "none running")
	}
	if s.Pid != 0 && s.StartedUnixMs > 0 {
		row("uptime", fmt.Sprintf("%s (pid %d)", humanDuration(now.Sub(time.UnixMilli(s.StartedUnixMs))), s.Pid))
	}
	row("restarts", fmt.Sprint(s.Restarts))
	row("ready", lastCheck(s.LastCheck, now))
	if e := s.LastExit; e != nil {
		how := fmt.Sprintf("exit code %d", e.Code)
		if e.Signal != "" {
			how = "killed by " + e.Signal
		}
		row("last exit", fmt.Sprintf("%s, %s ago", how, humanDuration(now.Sub(time.UnixMilli(e.AtUnixMs)))))
	}
	if s.Message != "" {
		row("message", s.Message)
	}
	tw.Flush()
}
