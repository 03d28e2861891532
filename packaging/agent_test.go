// Package packaging holds what the packages install; its test keeps the
// shipped default configuration valid.
package packaging

import (
	"testing"

	"github.com/dhvisor/dhvisor/internal/config"
)

func TestDefaultAgentConfigIsValid(t *testing.T) {
	n, err := config.LoadAgent("agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Services) != 12 {
		t.Fatalf("default config runs %d services, want the 12 of single-node", len(n.Services))
	}
}
