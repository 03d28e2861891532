package ctl

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func (o *options) printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	fmt.Fprintln(o.out, string(b))
	return nil
}

func (o *options) routesCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "routes",
		Short: "The route table Envoy gets: match, cluster, endpoints, in the order Envoy tries them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.callCoord(cmd.Context(), 10*time.Second, func(ctx context.Context, c pb.CoordinatorClient) error {
				resp, err := c.Routes(ctx, &pb.RoutesRequest{})
				if err != nil {
					return rpcError(err)
				}
				if asJSON {
					return o.printJSON(resp)
				}
				tw := tabwriter.NewWriter(o.out, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "MATCH\tREWRITE\tCLUSTER\tENDPOINTS")
				for _, r := range resp.Routes {
					eps := strings.Join(r.Endpoints, ",")
					if eps == "" {
						eps = "(none healthy)"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Match, dash(r.Rewrite), r.Cluster, eps)
				}
				tw.Flush()
				var vs []string
				for _, t := range slices.Sorted(maps.Keys(resp.Versions)) {
					vs = append(vs, t+" "+resp.Versions[t])
				}
				fmt.Fprintf(o.out, "served by %s on %s; versions: %s; built in %s (building every worker anew: %s), handed to the clients in %s\n", resp.AnsweredBy, dash(resp.XdsAddr), strings.Join(vs, ", "),
					time.Duration(resp.BuildUs)*time.Microsecond, time.Duration(resp.FullBuildUs)*time.Microsecond, time.Duration(resp.ServeUs)*time.Microsecond)
				if resp.ExtraRoutesError != "" {
					fmt.Fprintf(o.out, "the leader refused coordinator.yaml's extra routes; the loaded ones stay:\n%s\n", resp.ExtraRoutesError)
					return fail(ExitNotOK, "extra routes refused")
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's RoutesResponse as JSON")
	cmd.AddCommand(o.extraRoutesCmd())
	return cmd
}

func (o *options) workersCmd() *cobra.Command {
	var asJSON bool
	var node string
	cmd := &cobra.Command{
		Use:   "workers",
		Short: "The query workers the dispatchers registered or the configuration server serves, with their Envoy prefixes and leases",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.callCoord(cmd.Context(), 10*time.Second, func(ctx context.Context, c pb.CoordinatorClient) error {
				resp, err := c.Workers(ctx, &pb.WorkersRequest{Node: node})
				if err != nil {
					return rpcError(err)
				}
				if asJSON {
					return o.printJSON(resp)
				}
				now := time.Now()
				tw := tabwriter.NewWriter(o.out, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "NODE\tDISPATCHER\tWORKER\tPREFIX\tADDRESS\tKIND\tLEASE")
				n := 0
				for _, ws := range resp.Sets {
					lease := "ends in " + humanDuration(time.UnixMilli(ws.LeaseExpiresUnixMs).Sub(now))
					switch {
					case now.UnixMilli() >= ws.LeaseExpiresUnixMs:
						lease = "ended (not routed)"
					case ws.Upstream != "" && resp.Upstream.GetAddress() == ws.Upstream:
						lease = importedLease(resp.Upstream, now)
					}
					for _, w := range ws.Workers {
						host := w.Host
						if host == "" {
							host = ws.Node
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s:%d\t%s\t%s\n", ws.Node, ws.Dispatcher, w.Name, w.EnvoyPrefix, host, w.Port, dash(w.Kind), lease)
						n++
					}
				}
				tw.Flush()
				fmt.Fprintf(o.out, "%d workers from %d dispatchers (answered by %s)\n", n, len(resp.Sets), resp.AnsweredBy)
				if u := resp.Upstream; u != nil {
					fmt.Fprintln(o.out, upstreamSummary(u, now))
					for _, s := range u.Skipped {
						fmt.Fprintln(o.out, "  not imported: "+s)
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's WorkersResponse as JSON")
	cmd.Flags().StringVar(&node, "node", "", "only this node's workers")
	return cmd
}
