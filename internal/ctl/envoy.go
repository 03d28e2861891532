package ctl

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/dhvisor/dhvisor/internal/envoybootstrap"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func (o *options) envoyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "envoy", Short: "Envoy in front of the cluster: its bootstrap"}
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
	f.StringVar(&opts.ServerCert, "server-cert", "/etc/envoy/tls/server.pem", "the certificate chain Envoy presents to clients")
	f.StringVar(&opts.ServerKey, "server-key", "/etc/envoy/tls/server-key.pem", "its key")
	f.BoolVar(&opts.ListenerPlaintext, "listener-plaintext", false, "serve the listener without TLS (TLS terminated in front of Envoy)")
	cmd.AddCommand(boot)
	return cmd
}
