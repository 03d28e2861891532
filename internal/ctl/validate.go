package ctl

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/graph"
)

func validateCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "validate [FILE...]",
		Short: "Check agent and coordinator configuration files (default " + config.DefaultAgentPath + ") and the roles they use",
		RunE: func(cmd *cobra.Command, files []string) error {
			if len(files) == 0 {
				files = []string{config.DefaultAgentPath}
			}
			bad := 0
			for _, f := range files {
				if isCoordinatorFile(f) {
					c, err := config.LoadCoordinator(f)
					if err != nil {
						bad++
						fmt.Fprintf(o.errOut, "%s: invalid\n%s\n", f, indent(err.Error()))
						continue
					}
					// The extra routes file is read at run time too (and
					// again when it changes); a bad one is reported here.
					routes, err := config.LoadExtraRoutes(cmd.Context(), c)
					if err != nil {
						bad++
						fmt.Fprintf(o.errOut, "%s: invalid\n%s\n", f, indent(err.Error()))
						continue
					}
					xds := c.Envoy.XDS
					fmt.Fprintf(o.out, "%s: ok, coordinator %s, api %s, raft %s, xds %s, %d initial voters, %d extra routes\n", f, c.Node, c.API.Addr(c.API.Listen), c.Raft.Addr(c.Raft.Listen), xds.Addr(xds.Listen), len(c.Raft.Bootstrap), len(routes))
					continue
				}
				node, err := config.LoadAgent(f)
				if err != nil {
					bad++
					fmt.Fprintf(o.errOut, "%s: invalid\n%s\n", f, indent(err.Error()))
					continue
				}
				fmt.Fprintf(o.out, "%s: ok, node %s, roles %s, %d services\nstart order:\n%s", f, node.Agent.Node, strings.Join(node.Agent.Roles, ", "), len(node.Services), indent(graph.FormatLevels(node.Levels)))
				if len(node.NotApplied) > 0 {
					// Read and accepted, as monit would, but nothing the
					// agent supervises: the operator should know.
					fmt.Fprintf(o.out, "monit statements not applied (no bearing on supervision):\n")
					for _, na := range node.NotApplied {
						fmt.Fprintf(o.out, "  %s:%d: %s\n", na.File, na.Line, na.Text)
					}
				}
			}
			if bad > 0 {
				return fail(ExitError, "%d of %d files invalid", bad, len(files))
			}
			return nil
		},
	}
}

// isCoordinatorFile tells a coordinator.yaml (it has raft:) from an
// agent.yaml; a file that does not parse is left to the agent loader, which
// reports where.
func isCoordinatorFile(file string) bool {
	data, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	var top map[string]any
	if yaml.Unmarshal(data, &top) != nil {
		return false
	}
	_, ok := top["raft"]
	return ok
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return "  " + strings.Join(lines, "\n  ") + "\n"
}
