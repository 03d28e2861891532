// Package roles holds the role and service definitions shipped with dhvisor.
// They are data: sites override them per node in agent.yaml or add their own
// files in the agent's roles_dir.
package roles

import "embed"

// FS holds the shipped *.yaml role and service files.
//
//go:embed *.yaml
var FS embed.FS
