package ctl

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"gopkg.in/yaml.v3"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// DefaultCtlConfig is where dhctl finds the coordinators and the operator's
// certificate.
const DefaultCtlConfig = "/etc/dhvisor/dhctl.yaml"

// ctlConfig is dhctl.yaml.
type ctlConfig struct {
	// Coordinators are cluster API addresses (host:port). Empty: dhctl asks
	// the local agent, which sees the coordinators in gossip.
	Coordinators []string      `yaml:"coordinators"`
	TLS          tlsutil.Files `yaml:"tls"`
}

type coordFlags struct {
	config       string
	coordinators []string
}

func (o *options) addCoordFlags(root *cobra.Command) {
	def := os.Getenv("DHCTL_CONFIG")
	if def == "" {
		def = DefaultCtlConfig
	}
	root.PersistentFlags().StringVar(&o.coord.config, "config", def, "dhctl configuration: coordinators and the operator certificate (env DHCTL_CONFIG)")
	root.PersistentFlags().StringSliceVar(&o.coord.coordinators, "coordinator", nil, "coordinator API address host:port (repeatable; default: from --config, else from the local agent)")
}

func (o *options) loadCtlConfig() (ctlConfig, error) {
	var c ctlConfig
	data, err := os.ReadFile(o.coord.config)
	if os.IsNotExist(err) && o.coord.config == DefaultCtlConfig {
		return c, nil
	}
	if err != nil {
		return c, fail(ExitError, "--config %s: %v", o.coord.config, err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return c, fail(ExitError, "%s: %v (expected coordinators: [host:port, ...] and tls: {ca, cert, key})", o.coord.config, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	return c, nil
}

// coordClient connects to the coordinators. found is false when there are
// none to be found: commands then act on the local node only, as without a
// coordinator.
func (o *options) coordClient(ctx context.Context) (c pb.CoordinatorClient, closeConn func(), found bool, err error) {
	cfg, err := o.loadCtlConfig()
	if err != nil {
		return nil, nil, false, err
	}
	addrs := o.coord.coordinators
	if len(addrs) == 0 {
		addrs = cfg.Coordinators
	}
	if len(addrs) == 0 {
		addrs = o.coordinatorsFromAgent(ctx)
	}
	if len(addrs) == 0 {
		return nil, nil, false, nil
	}
	if cfg.TLS.IsZero() {
		return nil, nil, true, fail(ExitError, "coordinators found (%s) but no operator certificate: set tls: {ca, cert, key} in %s (make one with `dhctl tls cert create --operator`), or use --local", strings.Join(addrs, ", "), o.coord.config)
	}
	tc, err := tlsutil.ClientConfig(cfg.TLS, tlsutil.RoleCoordinator)
	if err != nil {
		return nil, nil, true, fail(ExitError, "%s: %v", o.coord.config, err)
	}
	// pick_first tries the coordinators in turn: any replica answers reads,
	// and passes writes on to the leader.
	r := manual.NewBuilderWithScheme("dhvisor")
	var state resolver.State
	for _, a := range addrs {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(state)
	conn, err := grpc.NewClient("dhvisor:///coordinators", grpc.WithResolvers(r), grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(withUser(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(withUser(ctx), desc, cc, method, opts...)
		}))
	if err != nil {
		return nil, nil, true, fail(ExitError, "coordinators %s: %v", strings.Join(addrs, ", "), err)
	}
	return pb.NewCoordinatorClient(conn), func() { conn.Close() }, true, nil
}

// withUser tells the coordinator which operating-system user runs dhctl:
// the audit log shows it beside the certificate's name.
func withUser(ctx context.Context) context.Context {
	name := os.Getenv("SUDO_USER")
	if name == "" {
		if u, err := user.Current(); err == nil {
			name = u.Username
		}
	}
	return metadata.AppendToOutgoingContext(ctx, "x-dhvisor-user", name)
}

// coordinatorsFromAgent asks the local agent which coordinators gossip.
func (o *options) coordinatorsFromAgent(ctx context.Context) []string {
	if _, err := os.Stat(o.socket); err != nil {
		return nil
	}
	var addrs []string
	_ = o.call(ctx, 5*time.Second, func(ctx context.Context, c agentpb.AgentClient) error {
		resp, err := c.Cluster(ctx, &agentpb.ClusterRequest{})
		if err != nil {
			return err
		}
		for _, n := range resp.Nodes {
			if n.Kind == "coordinator" && n.State == "alive" && n.ApiAddr != "" {
				addrs = append(addrs, n.ApiAddr)
			}
		}
		return nil
	})
	return addrs
}

// callCoord runs f against the coordinators within timeout; without any it
// fails, naming how to point dhctl at them.
func (o *options) callCoord(ctx context.Context, timeout time.Duration, f func(ctx context.Context, c pb.CoordinatorClient) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return o.withCoord(ctx, f)
}

// withCoord is callCoord without an overall timeout: following an
// operation lasts as long as the operation.
func (o *options) withCoord(ctx context.Context, f func(ctx context.Context, c pb.CoordinatorClient) error) error {
	c, closeConn, found, err := o.coordClient(ctx)
	if err != nil {
		return err
	}
	if !found {
		return fail(ExitError, "no coordinator found: list them in %s (coordinators:) or with --coordinator host:port", o.coord.config)
	}
	defer closeConn()
	return f(ctx, c)
}

func (o *options) coordinatorCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "coordinator", Short: "The coordinator replicas: list, add, remove, hand over leadership"}
	peers := &cobra.Command{
		Use: "peers", Short: "List the coordinator replicas and the leader", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.callCoord(cmd.Context(), 10*time.Second, func(ctx context.Context, c pb.CoordinatorClient) error {
				resp, err := c.Peers(ctx, &pb.PeersRequest{})
				if err != nil {
					return rpcError(err)
				}
				o.printPeers(resp)
				return nil
			})
		},
	}
	var apiAddr string
	join := &cobra.Command{
		Use: "join ID RAFT_ADDR", Short: "Add a replica (started without raft.bootstrap) as a voter", Args: exactArgs(2, "ID (the new replica's node name) and RAFT_ADDR (host:port)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.callCoord(cmd.Context(), time.Minute, func(ctx context.Context, c pb.CoordinatorClient) error {
				resp, err := c.Join(ctx, &pb.JoinRequest{Id: args[0], RaftAddr: args[1], ApiAddr: apiAddr})
				if err != nil {
					return rpcError(err)
				}
				o.printPeers(resp)
				return nil
			})
		},
	}
	join.Flags().StringVar(&apiAddr, "api", "", "the new replica's API address host:port (it also publishes it itself once it runs)")
	remove := &cobra.Command{
		Use: "remove ID", Short: "Remove a replica from the voters", Args: exactArgs(1, "the replica's ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.callCoord(cmd.Context(), time.Minute, func(ctx context.Context, c pb.CoordinatorClient) error {
				resp, err := c.Remove(ctx, &pb.RemoveRequest{Id: args[0]})
				if err != nil {
					return rpcError(err)
				}
				o.printPeers(resp)
				return nil
			})
		},
	}
	transfer := &cobra.Command{
		Use: "transfer [ID]", Short: "Hand leadership to another replica (to ID, or any), before restarting the leader", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &pb.TransferRequest{}
			if len(args) == 1 {
				req.Id = args[0]
			}
			return o.callCoord(cmd.Context(), time.Minute, func(ctx context.Context, c pb.CoordinatorClient) error {
				resp, err := c.Transfer(ctx, req)
				if err != nil {
					return rpcError(err)
				}
				o.printPeers(resp)
				return nil
			})
		},
	}
	cmd.AddCommand(peers, join, remove, transfer)
	return cmd
}

func (o *options) printPeers(resp *pb.PeersResponse) {
	fmt.Fprintf(o.out, "%-16s %-22s %-22s %s\n", "ID", "RAFT", "API", "ROLE")
	for _, p := range resp.Peers {
		role := "follower"
		if p.Leader {
			role = "leader"
		}
		if !p.Voter {
			role += " (non-voter)"
		}
		fmt.Fprintf(o.out, "%-16s %-22s %-22s %s\n", p.Peer.Id, p.Peer.RaftAddr, dash(p.Peer.ApiAddr), role)
	}
	if resp.Leader == "" {
		fmt.Fprintln(o.out, "no leader: an election is under way, or a majority of the replicas is down")
	}
	fmt.Fprintf(o.out, "answered by %s, commit index %d, applied %d\n", resp.AnsweredBy, resp.CommitIndex, resp.AppliedIndex)
}

func (o *options) auditCmd() *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use: "audit", Short: "Who changed what, when: every mutation of the cluster state", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit <= 0 {
				return fail(ExitError, "--limit %d: expected a positive number", limit)
			}
			return o.callCoord(cmd.Context(), 10*time.Second, func(ctx context.Context, c pb.CoordinatorClient) error {
				resp, err := c.Audit(ctx, &pb.AuditRequest{Limit: int32(limit)})
				if err != nil {
					return rpcError(err)
				}
				for _, e := range resp.Entries {
					fmt.Fprintf(o.out, "%s  %-8d %-28s %s\n", time.UnixMilli(e.AtUnixMs).Format("2006-01-02 15:04:05.000"), e.Index, dash(e.Who), e.What)
				}
				return nil
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 50, "entries to show, newest last")
	return cmd
}
