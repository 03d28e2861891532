package ctl

import (
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// DeephavenDhctl is Deephaven's own data-control tool, also named dhctl.
const DeephavenDhctl = "/usr/illumon/latest/bin/dhctl"

// passThrough reports whether args name a subcommand that is not dhctl's own,
// so that `dhctl intraday ...` and `dhctl metadata ...` keep working.
func passThrough(root *cobra.Command, args []string) bool {
	first := args[0]
	if strings.HasPrefix(first, "-") || first == "help" || first == "completion" || first == "__complete" {
		return false
	}
	for _, c := range root.Commands() {
		if c.Name() == first || c.HasAlias(first) {
			return false
		}
	}
	return true
}

func deephavenDhctl() string {
	if p := os.Getenv("DHVISOR_DEEPHAVEN_DHCTL"); p != "" {
		return p
	}
	return DeephavenDhctl
}

// runDeephavenDhctl replaces this process with Deephaven's dhctl, so its
// exit status, signals and terminal handling are exactly its own.
func runDeephavenDhctl(args []string, errOut io.Writer) int {
	path := deephavenDhctl()
	if _, err := os.Stat(path); err != nil {
		fmt.Fprintf(errOut, "dhctl: unknown command %q (not a dhvisor command, and Deephaven's dhctl is not at %s; see dhctl --help)\n", args[0], path)
		return ExitError
	}
	err := syscall.Exec(path, append([]string{path}, args...), os.Environ())
	fmt.Fprintf(errOut, "dhctl: exec %s: %v\n", path, err)
	return ExitError
}
