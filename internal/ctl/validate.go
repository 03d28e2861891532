package ctl

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/graph"
)

func validateCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "validate [FILE...]",
		Short: "Check agent configuration files (default " + config.DefaultAgentPath + ") and the roles they use",
		RunE: func(cmd *cobra.Command, files []string) error {
			if len(files) == 0 {
				files = []string{config.DefaultAgentPath}
			}
			bad := 0
			for _, f := range files {
				node, err := config.LoadAgent(f)
				if err != nil {
					bad++
					fmt.Fprintf(o.errOut, "%s: invalid\n%s\n", f, indent(err.Error()))
					continue
				}
				fmt.Fprintf(o.out, "%s: ok, node %s, roles %s, %d services\nstart order:\n%s", f, node.Agent.Node, strings.Join(node.Agent.Roles, ", "), len(node.Services), indent(graph.FormatLevels(node.Levels)))
			}
			if bad > 0 {
				return fail(ExitError, "%d of %d files invalid", bad, len(files))
			}
			return nil
		},
	}
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return "  " + strings.Join(lines, "\n  ") + "\n"
}
