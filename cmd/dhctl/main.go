// Command dhctl is the dhvisor operator CLI; run as monit (a symlink), it
// is monit's command line.
package main

import (
	"os"

	"github.com/dhvisor/dhvisor/internal/ctl"
)

func main() {
	os.Exit(ctl.Execute(ctl.Args(os.Args), os.Stdout, os.Stderr))
}
