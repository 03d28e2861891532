// Package version carries the build's version, set by the Makefile from git
// (-ldflags "-X github.com/dhvisor/dhvisor/internal/version.Version=...").
package version

// Version is the dhvisor version of this build.
var Version = "dev"
