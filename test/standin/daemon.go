package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// daemonReadyTimeout bounds how long the parent waits for its child beyond
// any start delay, so a wedged child cannot wedge the supervisor's start.
const daemonReadyTimeout = 30 * time.Second

// daemonize re-executes the stand-in in a new session and returns once the
// child listens, because monit expects its start program to do exactly
// that. The child reports readiness over a pipe rather than being polled on
// its ports: a port someone else already holds would look ready, and the
// pipe also tells at once when the child died first.
func daemonize(cfg *config, lg *log.Logger, args []string) int {
	exe, err := os.Executable()
	if err != nil {
		lg.Printf("daemonize: %v", err)
		return 1
	}
	r, w, err := os.Pipe()
	if err != nil {
		lg.Printf("daemonize: %v", err)
		return 1
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), readyFDEnv+"=3") // ExtraFiles[0] is fd 3
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// Nil stdin/stdout/stderr are /dev/null, so the child holds none of the
	// supervisor's pipes open after the parent is gone.
	if cfg.logFile != "" {
		f, err := os.OpenFile(cfg.logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			lg.Printf("daemonize: %v", err)
			return 1
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		lg.Printf("daemonize: %v", err)
		return 1
	}
	w.Close() // else the read below never sees EOF when the child dies
	pid := cmd.Process.Pid
	if cfg.pidfile != "" {
		if err := writePidfile(cfg.pidfile, pid); err != nil {
			lg.Printf("daemonize: %v", err)
			cmd.Process.Kill()
			cmd.Wait()
			return 1
		}
	}

	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if rest, ok := strings.CutPrefix(line, "ready"); ok {
			lg.Printf("daemonized as pid %d listening on %s", pid, addrList(strings.Fields(rest)))
			return 0
		}
		cmd.Wait()
		removePidfile(cfg.pidfile, pid)
		code := exitCode(cmd.ProcessState)
		lg.Printf("daemon child pid %d failed before listening: %v", pid, cmd.ProcessState)
		return code
	case <-time.After(cfg.startDelay + daemonReadyTimeout):
		lg.Printf("daemon child pid %d not listening after %v; killing it", pid, cfg.startDelay+daemonReadyTimeout)
		cmd.Process.Kill()
		cmd.Wait()
		removePidfile(cfg.pidfile, pid)
		return 1
	}
}

// launch starts the service in a new session and returns at once, as
// Deephaven's launcher starts its JVM: whether the service came up is for
// whoever follows its pidfile to find out.
func launch(cfg *config, lg *log.Logger, args []string) int {
	exe, err := os.Executable()
	if err != nil {
		lg.Printf("launch: %v", err)
		return 1
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), readyFDEnv+"="+launchedFD)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cfg.logFile != "" {
		f, err := os.OpenFile(cfg.logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			lg.Printf("launch: %v", err)
			return 1
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		lg.Printf("launch: %v", err)
		return 1
	}
	lg.Printf("launched pid %d", cmd.Process.Pid)
	_ = cmd.Process.Release()
	return 0
}

// createPidfile writes pid to path only if no pidfile is there; the file
// is written whole under a temporary name and linked into place, so that
// a reader never sees it empty.
func createPidfile(path string, pid int) error {
	tmp := fmt.Sprintf("%s.tmp.%d", path, pid)
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s exists: the service may be running already", path)
		}
		return err
	}
	return nil
}

// exitCode follows the shell's 128+signal convention so a child killed by a
// signal still makes the parent fail.
func exitCode(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if c := ps.ExitCode(); c >= 0 {
		return c
	}
	return 1
}

// notifyReady tells a waiting daemonize parent that the ports are open.
func notifyReady(fd string, addrs []string) error {
	n, err := strconv.Atoi(fd)
	if err != nil {
		return fmt.Errorf("bad %s %q", readyFDEnv, fd)
	}
	f := os.NewFile(uintptr(n), "ready")
	if f == nil {
		return fmt.Errorf("bad %s %q", readyFDEnv, fd)
	}
	defer f.Close()
	_, err = f.WriteString("ready " + strings.Join(addrs, " ") + "\n")
	return err
}

// writePidfile renames into place so a supervisor never reads half a pid.
func writePidfile(path string, pid int) error {
	tmp := fmt.Sprintf("%s.tmp.%d", path, os.Getpid())
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// removePidfile leaves the file alone if it names another process, which
// happens when a newer instance has already taken it over.
func removePidfile(path string, pid int) {
	if path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid) {
		os.Remove(path)
	}
}

func addrList(addrs []string) string {
	if len(addrs) == 0 {
		return "(no ports)"
	}
	return strings.Join(addrs, ",")
}
