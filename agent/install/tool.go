package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dhvisor/dhvisor/internal/config"
)

// Package formats, told apart by the file's first bytes.
const (
	formatDeb = "deb"
	formatRPM = "rpm"
)

var rpmMagic = []byte{0xed, 0xab, 0xee, 0xdb}

// fileFormat reads a package file's magic number.
func fileFormat(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 8)
	if _, err := io.ReadFull(f, head); err != nil {
		return "", fmt.Errorf("%s: too short to be a package", file)
	}
	switch {
	case bytes.Equal(head, []byte("!<arch>\n")):
		return formatDeb, nil
	case bytes.Equal(head[:4], rpmMagic):
		return formatRPM, nil
	}
	return "", fmt.Errorf("%s: neither a .deb nor an .rpm package", file)
}

// tool is a package tool's commands.
type tool struct {
	name    string
	install func(c config.PackageCommand) []string
	query   func(pkg string) []string
}

var dpkgQuery = func(pkg string) []string {
	return []string{"dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}\n", pkg}
}

var rpmQuery = func(pkg string) []string {
	return []string{"rpm", "-q", "--qf", "%{EPOCH}:%{VERSION}-%{RELEASE}\n", pkg}
}

// tools by name, in the order auto tries them for each format.
var tools = map[string]tool{
	"dnf": {"dnf", func(c config.PackageCommand) []string {
		if c.Downgrade {
			return []string{"dnf", "-y", "downgrade", c.File}
		}
		return []string{"dnf", "-y", "install", c.File}
	}, rpmQuery},
	"yum": {"yum", func(c config.PackageCommand) []string {
		if c.Downgrade {
			return []string{"yum", "-y", "downgrade", c.File}
		}
		return []string{"yum", "-y", "localinstall", c.File}
	}, rpmQuery},
	"rpm": {"rpm", func(c config.PackageCommand) []string {
		return []string{"rpm", "-U", "--oldpackage", "--replacepkgs", c.File}
	}, rpmQuery},
	"apt": {"apt", func(c config.PackageCommand) []string {
		return []string{"apt-get", "install", "-y", "--allow-downgrades", c.File}
	}, dpkgQuery},
	"dpkg": {"dpkg", func(c config.PackageCommand) []string {
		return []string{"dpkg", "-i", c.File}
	}, dpkgQuery},
}

var autoOrder = map[string][]string{formatRPM: {"dnf", "yum", "rpm"}, formatDeb: {"apt", "dpkg"}}

// chooseTool picks the tool for a package of format: the configured one, or
// the first the node has.
func chooseTool(cfg config.Packages, format string) (tool, error) {
	if cfg.Tool != "auto" {
		t, ok := tools[cfg.Tool]
		if !ok {
			return tool{}, fmt.Errorf("packages.tool %q is not a package tool", cfg.Tool)
		}
		if len(cfg.Install) == 0 && !slices.Contains(autoOrder[format], t.name) {
			return tool{}, fmt.Errorf("packages.tool %s cannot install a .%s package", t.name, format)
		}
		return t, nil
	}
	for _, name := range autoOrder[format] {
		if have(config.PackageTools[name]...) {
			return tools[name], nil
		}
	}
	return tool{}, fmt.Errorf("no tool for .%s packages on this node (looked for %s); install one or set packages.install and packages.query", format, strings.Join(autoOrder[format], ", "))
}

func have(progs ...string) bool {
	for _, p := range progs {
		if _, err := exec.LookPath(p); err != nil {
			return false
		}
	}
	return true
}

// inspect reads the package's name and version from the file with the
// format's own reader.
func inspect(ctx context.Context, file, format string) (name, version string, err error) {
	var argv []string
	switch format {
	case formatDeb:
		argv = []string{"dpkg-deb", "--show", "--showformat=${Package} ${Version}\n", file}
	case formatRPM:
		argv = []string{"rpm", "-qp", "--nosignature", "--qf", "%{NAME} %{EPOCH}:%{VERSION}-%{RELEASE}\n", file}
	}
	out, code, err := run(ctx, argv, time.Minute, nil)
	if err != nil || code != 0 {
		return "", "", fmt.Errorf("reading %s with %s: %v%s", file, argv[0], errOrExit(err, code), outputSuffix(out))
	}
	f := strings.Fields(strings.TrimSpace(lastLine(out)))
	if len(f) != 2 {
		return "", "", fmt.Errorf("reading %s with %s: unexpected output %q", file, argv[0], out)
	}
	return f[0], normalizeVersion(f[1]), nil
}

// normalizeVersion drops an unset rpm epoch ("(none):1.2-1").
func normalizeVersion(v string) string {
	return strings.TrimPrefix(v, "(none):")
}

// Installed is a package's installed state.
type Installed struct {
	Version string // "" when not installed
	// Clean is false when the tool left the package half-way (dpkg's
	// unpacked or half-configured): installed files, not a finished install.
	Clean  bool
	Status string // dpkg's status abbreviation, when the query gives one
}

func (i Installed) String() string {
	switch {
	case i.Version == "":
		return "not installed"
	case !i.Clean:
		return i.Version + " (" + dpkgStatusWord(i.Status) + ")"
	}
	return i.Version
}

// query asks the node's tool which version of pkg is installed.
func query(ctx context.Context, argv []string) (Installed, error) {
	out, code, err := run(ctx, argv, time.Minute, nil)
	if err != nil {
		return Installed{}, fmt.Errorf("%s: %v", argv[0], err)
	}
	text := strings.TrimSpace(lastLine(out))
	if code != 0 {
		low := strings.ToLower(out)
		if strings.Contains(low, "not installed") || strings.Contains(low, "no packages found") {
			return Installed{}, nil
		}
		return Installed{}, fmt.Errorf("%s exited %d%s", strings.Join(argv, " "), code, outputSuffix(out))
	}
	return parseQuery(text), nil
}

// parseQuery reads "VERSION" or dpkg's "STATUS VERSION".
func parseQuery(text string) Installed {
	f := strings.Fields(text)
	switch {
	case len(f) == 0:
		return Installed{}
	case len(f) == 1:
		return Installed{Version: normalizeVersion(f[0]), Clean: true}
	}
	st, v := f[0], normalizeVersion(f[len(f)-1])
	if len(st) < 2 {
		return Installed{Version: v, Clean: true}
	}
	switch st[1] {
	case 'n', 'c': // not installed, config files only
		return Installed{}
	case 'i':
		return Installed{Version: v, Clean: !strings.Contains(st, "R"), Status: st}
	}
	return Installed{Version: v, Status: st}
}

func dpkgStatusWord(st string) string {
	if len(st) < 2 {
		return "not finished"
	}
	switch st[1] {
	case 'H':
		return "half-installed"
	case 'U':
		return "unpacked, not configured"
	case 'F':
		return "half-configured"
	case 'W', 't':
		return "triggers pending"
	case 'i':
		return "needs reinstall"
	}
	return "status " + st
}

// maxOutput bounds the tool output kept: the end says what went wrong.
const maxOutput = 16 << 10

// run runs argv in its own process group, so that an agent killed while a
// tool runs leaves it to finish (a package tool killed half-way leaves a
// half-installed package), and kills the group when timeout passes (ctx
// only lets go of it: the agent is stopping). started
// is told the pid. It returns the combined output (its tail) and the exit
// code; err is set only when the program could not run at all.
func run(ctx context.Context, argv []string, timeout time.Duration, started func(pid int)) (string, int, error) {
	if len(argv) == 0 || argv[0] == "" {
		return "", -1, errors.New("empty command")
	}
	var out tailBuffer
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", -1, err
	}
	if started != nil {
		started(cmd.Process.Pid)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		return out.String(), exitCode(err), waitErr(err)
	case <-timer.C:
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return out.String() + fmt.Sprintf("\n(killed after %v)", timeout.Round(time.Millisecond)), -1, nil
	case <-ctx.Done():
		// The agent is stopping: leave the tool to finish, the next agent
		// waits for it (see Installer.step).
		return out.String(), -1, ctx.Err()
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func waitErr(err error) error {
	var ee *exec.ExitError
	if err == nil || errors.As(err, &ee) {
		return nil
	}
	return err
}

func errOrExit(err error, code int) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("exit status %d", code)
}

func outputSuffix(out string) string {
	out = strings.TrimSpace(out)
	if out == "" {
		return ""
	}
	return ":\n" + out
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// tailBuffer keeps the last maxOutput bytes written.
type tailBuffer struct {
	b       []byte
	dropped bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > maxOutput {
		t.b = append([]byte(nil), t.b[len(t.b)-maxOutput:]...)
		t.dropped = true
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	if t.dropped {
		return "(...)\n" + string(t.b)
	}
	return string(t.b)
}
