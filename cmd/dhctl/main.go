// Command dhctl is the dhvisor operator CLI.
package main

import (
	"os"

	"github.com/dhvisor/dhvisor/internal/ctl"
)

func main() {
	os.Exit(ctl.Execute(os.Args[1:], os.Stdout, os.Stderr))
}
