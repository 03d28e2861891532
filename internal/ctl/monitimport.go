package ctl

import (
	"github.com/spf13/cobra"

	"github.com/dhvisor/dhvisor/internal/monit"
)

func (o *options) monitImportCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "import FILE|DIR|GLOB...",
		Short: "Print the services monit control files define, as agent.yaml services: YAML",
		Long: `Reads monit control files as monit 5.33 reads them (includes followed)
and prints every "check process" as an agent.yaml service, each field with a
comment naming the monit file:line it came from. Statements with no bearing
on supervision are listed as not applied. Exit status 2 when a file is
refused; every refusal names file:line:column and what was expected.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			im, err := monit.Load(args)
			if err != nil {
				return fail(ExitError, "monit control files refused:\n%v", err)
			}
			out, err := im.YAML()
			if err != nil {
				return fail(ExitError, "%v", err)
			}
			_, err = o.out.Write(out)
			return err
		},
	}
}
