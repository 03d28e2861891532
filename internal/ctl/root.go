// Package ctl is dhctl's command tree: the operator's CLI over the local
// agent's API.
package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/dhvisor/dhvisor/internal/version"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// Exit codes, documented in `dhctl --help`.
const (
	ExitOK        = 0
	ExitNotOK     = 1 // a service is not OK, or an operation did not succeed
	ExitError     = 2 // bad arguments, invalid configuration, agent unreachable
	DefaultSocket = "/run/dhvisor/agent.sock"
)

// ExitError carries the exit code for a failed command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func (e *exitError) Unwrap() error { return e.err }

func fail(code int, format string, args ...any) error {
	return &exitError{code: code, err: fmt.Errorf(format, args...)}
}

type options struct {
	socket string
	coord  coordFlags
	out    io.Writer
	errOut io.Writer
}

// NewRoot returns the dhctl command tree writing to out and errOut.
func NewRoot(out, errOut io.Writer) *cobra.Command {
	o := &options{out: out, errOut: errOut}
	root := &cobra.Command{
		Use:   "dhctl",
		Short: "Operate a dhvisor-supervised Deephaven node or cluster",
		Long: `dhctl talks to the local dhvisor agent (dhagent) over its unix socket.

Exit status: 0 when everything asked about is OK, 1 when a service is not OK
or an operation did not reach its goal, 2 on bad arguments, invalid
configuration or an unreachable agent.

Subcommands dhctl does not know (intraday, metadata, ...) are passed to
Deephaven's own dhctl (/usr/illumon/latest/bin/dhctl) when it is installed.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Version,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	def := os.Getenv("DHVISOR_SOCKET")
	if def == "" {
		def = DefaultSocket
	}
	root.PersistentFlags().StringVar(&o.socket, "socket", def, "agent socket (env DHVISOR_SOCKET)")
	o.addCoordFlags(root)
	root.AddCommand(
		o.statusCmd(),
		o.nodesCmd(),
		o.gossipCmd(),
		o.tlsCmd(),
		o.controlCmd("start", pb.Action_ACTION_START, "Start services (all: in dependency order)"),
		o.controlCmd("stop", pb.Action_ACTION_STOP, "Stop services (all: in reverse dependency order)"),
		o.controlCmd("restart", pb.Action_ACTION_RESTART, "Restart services"),
		o.controlCmd("monitor", pb.Action_ACTION_MONITOR, "Resume monitoring (health checks and restarts)"),
		o.controlCmd("unmonitor", pb.Action_ACTION_UNMONITOR, "Stop monitoring; the process keeps running"),
		o.orderCmd("up", "Start every service: configuration_server first and waited for, then authentication_server, then the rest"),
		o.orderCmd("down", "Stop every service in reverse dependency order"),
		o.reloadCmd(),
		validateCmd(o),
		o.opsCmd(),
		o.upgradeCmd(),
		o.coordinatorCmd(),
		o.auditCmd(),
		o.routesCmd(),
		o.workersCmd(),
		o.envoyCmd(),
		o.monitCmd(),
		o.propertiesCmd(),
	)
	return root
}

// Execute runs dhctl with args and returns the process exit code.
func Execute(args []string, out, errOut io.Writer) int {
	root := NewRoot(out, errOut)
	if len(args) > 0 && passThrough(root, args) {
		return runDeephavenDhctl(args, errOut)
	}
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.Is(err, errReported) {
		errors.As(err, &ee)
		return ee.code
	}
	fmt.Fprintln(errOut, "dhctl:", err)
	if errors.As(err, &ee) {
		return ee.code
	}
	return ExitError
}

func (o *options) client(ctx context.Context) (pb.AgentClient, func(), error) {
	if _, err := os.Stat(o.socket); err != nil {
		return nil, nil, fail(ExitError, "cannot reach the agent: %v (is dhagent running? use --socket or DHVISOR_SOCKET)", err)
	}
	// gRPC's unix:// target wants an absolute path; a relative --socket is
	// relative to where dhctl runs.
	abs, err := filepath.Abs(o.socket)
	if err != nil {
		return nil, nil, fail(ExitError, "--socket %s: %v", o.socket, err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fail(ExitError, "agent socket %s: %v", o.socket, err)
	}
	return pb.NewAgentClient(conn), func() { conn.Close() }, nil
}

// call runs f with a client of the local agent, within timeout.
func (o *options) call(ctx context.Context, timeout time.Duration, f func(ctx context.Context, c pb.AgentClient) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, closeConn, err := o.client(ctx)
	if err != nil {
		return err
	}
	defer closeConn()
	return f(ctx, c)
}

// rpcError turns an API error into a message without gRPC's framing.
func rpcError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fail(ExitError, "%v", err)
	}
	msg := st.Message()
	if strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such file") {
		return fail(ExitError, "cannot reach the agent: %s", msg)
	}
	return fail(ExitNotOK, "%s", msg)
}

func humanDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

func humanBytes(b uint64) string {
	switch {
	case b == 0:
		return "-"
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", b>>10)
}
