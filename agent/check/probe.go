// Package check implements service health probes and the hysteresis that
// turns individual probe results into a health verdict.
//
// Timing is the caller's business: a probe runs once per Probe call and is
// bounded by the context it is given, so the supervisor sets the per-check
// timeout with context.WithTimeout.
package check

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
)

// Probe checks one aspect of a service's health.
//
// Probe returns nil on success. Failures are shown to operators as the
// "last check result" in dhctl status, so their messages are one short line
// naming the target and the reason, e.g.
// "tcp 127.0.0.1:22054: connection refused". The underlying cause stays
// available to errors.Is and errors.As (e.g. context.DeadlineExceeded).
//
// A Probe may hold resources between calls; if it implements io.Closer it
// must be released with Close when no longer used.
type Probe interface {
	Probe(ctx context.Context) error
}

// Close releases p's resources if it has any, so callers can retire every
// probe the same way whatever its kind.
func Close(p Probe) error {
	if c, ok := p.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// failure is a probe error whose message is written for operators while the
// error chain keeps the machine-readable cause.
type failure struct {
	msg   string
	cause error
}

func (f *failure) Error() string { return f.msg }
func (f *failure) Unwrap() error { return f.cause }

// fail builds a failure "target: reason" for cause.
func fail(target string, cause error) error {
	return &failure{msg: target + ": " + reason(cause), cause: cause}
}

// reason reduces the layered errors of the net, http and os packages
// ("Get \"http://x\": dial tcp 127.0.0.1:1: connect: connection refused")
// to the part an operator needs, since the target is already named.
func reason(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	if se, ok := errors.AsType[*os.SyscallError](err); ok {
		return se.Err.Error()
	}
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return reason(ue.Err)
	}
	if oe, ok := errors.AsType[*net.OpError](err); ok {
		return oe.Err.Error()
	}
	return err.Error()
}
