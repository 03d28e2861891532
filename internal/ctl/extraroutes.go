package ctl

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dhvisor/dhvisor/internal/extraroutes"
	"github.com/dhvisor/dhvisor/internal/properties"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func (o *options) extraRoutesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "extra",
		Short: "The extra routes (envoy.xds.extra.routes.*) every coordinator serves, loaded into raft",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(o.extraLoadCmd(), o.extraShowCmd())
	return cmd
}

func (o *options) extraLoadCmd() *cobra.Command {
	var dryRun bool
	var output string
	cmd := &cobra.Command{
		Use:   "load FILE",
		Short: "Load a Deephaven properties file's envoy.xds.extra.routes.* into raft, replacing the extra routes whole",
		Long: `Reads FILE and the files its includefiles name, checks them here, and sends
their text to the raft leader, which evaluates them as configuration_server on its
own host and commits the routes, versioned and audited: every coordinator then
serves them. A refused file changes nothing; every problem is named at its file:line.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			files, err := extraroutes.ReadFiles(args[0], properties.OpenFile)
			if err != nil {
				return fail(ExitError, "refused, nothing loaded:\n%v", err)
			}
			source := "dhctl routes extra load " + args[0]
			if abs, err := filepath.Abs(args[0]); err == nil {
				source = "dhctl routes extra load " + abs
			}
			return o.callCoord(cmd.Context(), 30*time.Second, func(ctx context.Context, c pb.CoordinatorClient) error {
				resp, err := c.LoadExtraRoutes(ctx, &pb.LoadExtraRoutesRequest{Files: files, DryRun: dryRun, Source: source})
				if status.Code(err) == codes.InvalidArgument {
					return fail(ExitError, "%s", status.Convert(err).Message())
				}
				if err != nil {
					return rpcError(err)
				}
				if output == outputJSON {
					return o.printJSON(resp)
				}
				er := resp.ExtraRoutes
				if dryRun {
					fmt.Fprintf(o.out, "would load %d extra routes (dry run, nothing changed):\n", len(er.Routes))
				} else {
					fmt.Fprintf(o.out, "loaded extra routes version %d: %d routes; every coordinator serves them\n", er.Version, len(er.Routes))
				}
				o.printExtraRoutes(er)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "evaluate and check on the leader, load nothing")
	cmd.Flags().StringVarP(&output, "output", "o", outputText, "text or json (the API's ExtraRoutesResponse)")
	return cmd
}

func (o *options) extraShowCmd() *cobra.Command {
	var output string
	var files bool
	cmd := &cobra.Command{
		Use:   "show",
		Short: "The extra routes as served: version, who loaded them and when, the routes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			return o.callCoord(cmd.Context(), 10*time.Second, func(ctx context.Context, c pb.CoordinatorClient) error {
				resp, err := c.ExtraRoutes(ctx, &pb.ExtraRoutesRequest{WithFiles: files})
				if err != nil {
					return rpcError(err)
				}
				if output == outputJSON {
					return o.printJSON(resp)
				}
				er := resp.ExtraRoutes
				if er.GetVersion() == 0 {
					fmt.Fprintf(o.out, "no extra routes loaded (load a file with `dhctl routes extra load FILE`); answered by %s\n", resp.AnsweredBy)
					return nil
				}
				fmt.Fprintf(o.out, "extra routes version %d, loaded by %s at %s (raft index %d)\n", er.Version, er.LoadedBy,
					time.UnixMilli(er.LoadedUnixMs).Format(time.RFC3339), er.RaftIndex)
				fmt.Fprintf(o.out, "source: %s\n", er.Source)
				o.printExtraRoutes(er)
				if files {
					for _, f := range er.Files {
						fmt.Fprintf(o.out, "---- %s\n%s", f.Name, f.Content)
						if len(f.Content) > 0 && f.Content[len(f.Content)-1] != '\n' {
							fmt.Fprintln(o.out)
						}
					}
				}
				fmt.Fprintf(o.out, "answered by %s\n", resp.AnsweredBy)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", outputText, "text or json (the API's ExtraRoutesResponse)")
	cmd.Flags().BoolVar(&files, "files", false, "print the loaded files' text too")
	return cmd
}

// printExtraRoutes prints where the routes were evaluated and the routes.
func (o *options) printExtraRoutes(er *pb.ExtraRoutes) {
	var names []string
	for _, f := range er.Files {
		names = append(names, f.Name)
	}
	if len(names) > 0 {
		sum := er.Sha256
		if len(sum) > 12 {
			sum = sum[:12]
		}
		fmt.Fprintf(o.out, "files: %s (sha256 %s)\n", strings.Join(names, ", "), sum)
	}
	fmt.Fprintf(o.out, "evaluated as configuration_server on %s (host names: %s)\n", dash(er.EvaluatedOn), dash(strings.Join(er.Hosts, ", ")))
	for _, w := range er.Warnings {
		fmt.Fprintf(o.out, "warning: %s\n", w)
	}
	if len(er.Routes) == 0 {
		fmt.Fprintln(o.out, "no routes")
		return
	}
	tw := tabwriter.NewWriter(o.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tMATCH\tUPSTREAM\tREWRITE\tORIGIN")
	for _, r := range er.Routes {
		match := r.Prefix
		if !r.ExactPrefix {
			p := strings.TrimSuffix(r.Prefix, "/")
			match = p + ", " + p + "/"
		}
		scheme := "http"
		if r.Tls {
			scheme = "https"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s://%s:%d\t%s\t%s\n", r.Name, match, scheme, r.Host, r.Port, r.PrefixRewrite, r.Origin)
	}
	tw.Flush()
}
