package agent

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// TestHooksEnv, set to 1 in the agent's environment, turns on what tests
// need to break the agent on purpose. Only tests set it (the package test
// adds it to the unit with a drop-in); nothing in the packages or docs does.
const TestHooksEnv = "DHVISOR_TEST_HOOKS"

// testHooks freezes the supervisor on SIGUSR2: its lock is taken for good,
// as a deadlock would, while the rest of the process (the gRPC server's
// goroutines, timers) runs on. A watchdog fed by a bare timer would keep
// such an agent alive; dhvisor's must let systemd kill it.
func (a *Agent) testHooks(ctx context.Context) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR2)
	defer signal.Stop(c)
	select {
	case <-ctx.Done():
	case <-c:
		a.log.Warn("test hook: freezing the supervisor (SIGUSR2)")
		a.mgr.Freeze()
	}
}
