package check

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// expect describes a probe result: ok, an exact message, or a substring.
type expect struct {
	msg      string // exact error message; "" with contains == "" means success
	contains string
}

func (e expect) check(t *testing.T, err error) {
	t.Helper()
	switch {
	case e.msg == "" && e.contains == "":
		if err != nil {
			t.Fatalf("probe failed: %v", err)
		}
	case err == nil:
		t.Fatalf("probe succeeded, want error %q%q", e.msg, e.contains)
	case e.msg != "" && err.Error() != e.msg:
		t.Fatalf("error %q, want %q", err, e.msg)
	case e.contains != "" && !strings.Contains(err.Error(), e.contains):
		t.Fatalf("error %q, want it to contain %q", err, e.contains)
	}
}

// closedAddr returns an address on which nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// listen returns a listener that never accepts: the kernel completes the
// handshake from its backlog, but nothing ever answers.
func listen(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func expired() context.Context {
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	cancel()
	return ctx
}

func TestTCP(t *testing.T) {
	open, closed := listen(t), closedAddr(t)
	tests := []struct {
		name string
		addr string
		ctx  context.Context
		want expect
	}{
		{name: "listening", addr: open, ctx: context.Background()},
		{name: "closed port", addr: closed, ctx: context.Background(), want: expect{msg: "tcp " + closed + ": connection refused"}},
		{name: "canceled", addr: open, ctx: canceled(), want: expect{msg: "tcp " + open + ": canceled"}},
		{name: "deadline passed", addr: open, ctx: expired(), want: expect{msg: "tcp " + open + ": timed out"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := NewTCP(tt.addr).Probe(tt.ctx)
			tt.want.check(t, err)
		})
	}
	err := NewTCP(open).Probe(expired())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("timeout error %v does not wrap context.DeadlineExceeded", err)
	}
}

type closerProbe struct{ closed bool }

func (p *closerProbe) Probe(context.Context) error { return nil }
func (p *closerProbe) Close() error                { p.closed = true; return io.ErrClosedPipe }

func TestClose(t *testing.T) {
	p := &closerProbe{}
	if err := Close(p); err != io.ErrClosedPipe || !p.closed {
		t.Errorf("Close = %v, closed %v; want the probe's Close called and its error returned", err, p.closed)
	}
	if err := Close(NewTCP("127.0.0.1:1")); err != nil {
		t.Errorf("Close(tcp probe) = %v", err)
	}
}

func TestHysteresis(t *testing.T) {
	// Steps: '+' success, '-' failure. Each result is one character:
	// U unknown, G became healthy, g still healthy, B became unhealthy,
	// b still unhealthy.
	tests := []struct {
		name       string
		fail, succ int
		steps      string
		want       string
	}{
		{name: "zero value follows every result", steps: "+-+--", want: "GBGBb"},
		{name: "unknown until enough successes", fail: 3, succ: 2, steps: "++", want: "UG"},
		{name: "unknown until enough failures", fail: 3, succ: 2, steps: "---", want: "UUB"},
		{name: "alternating stays unknown", fail: 3, succ: 2, steps: "-+-+-+-+", want: "UUUUUUUU"},
		{name: "broken failure run does not flip", fail: 3, succ: 2, steps: "++--+--+", want: "UGgggggg"},
		{name: "flips after consecutive failures", fail: 3, succ: 2, steps: "++---", want: "UGggB"},
		{name: "recovers after consecutive successes", fail: 2, succ: 3, steps: "--++-+++", want: "UBbbbbbG"},
		{name: "counts below one mean one", fail: -1, succ: 0, steps: "-+", want: "BG"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := Hysteresis{FailuresToBad: tt.fail, SuccessesToGood: tt.succ}
			got := make([]byte, len(tt.steps))
			for i, step := range []byte(tt.steps) {
				var err error
				if step == '-' {
					err = errors.New("down")
				}
				healthy, changed := h.Observe(err)
				h2, known := h.Healthy()
				if h2 != healthy {
					t.Fatalf("step %d: Observe says healthy=%v, Healthy says %v", i, healthy, h2)
				}
				got[i] = verdict(healthy, changed, known)
			}
			if string(got) != tt.want {
				t.Errorf("steps %s gave %s, want %s", tt.steps, got, tt.want)
			}
		})
	}
}

func verdict(healthy, changed, known bool) byte {
	switch {
	case !known:
		return 'U'
	case healthy && changed:
		return 'G'
	case healthy:
		return 'g'
	case changed:
		return 'B'
	}
	return 'b'
}

func TestHysteresisAccessors(t *testing.T) {
	h := Hysteresis{FailuresToBad: 2, SuccessesToGood: 2}
	if err, n := h.LastError(), h.ConsecutiveFailures(); err != nil || n != 0 {
		t.Fatalf("fresh: LastError %v, ConsecutiveFailures %d", err, n)
	}
	e1, e2 := errors.New("first"), errors.New("second")
	steps := []struct {
		err       error
		wantLast  error
		wantFails int
	}{
		{err: e1, wantLast: e1, wantFails: 1},
		{err: e2, wantLast: e2, wantFails: 2},
		{err: e2, wantLast: e2, wantFails: 3},
		{err: nil, wantLast: nil, wantFails: 0},
		{err: e1, wantLast: e1, wantFails: 1},
	}
	for i, s := range steps {
		h.Observe(s.err)
		if h.LastError() != s.wantLast || h.ConsecutiveFailures() != s.wantFails {
			t.Errorf("step %d: LastError %v, ConsecutiveFailures %d; want %v, %d",
				i, h.LastError(), h.ConsecutiveFailures(), s.wantLast, s.wantFails)
		}
	}

	h.Reset()
	if _, known := h.Healthy(); known || h.LastError() != nil || h.ConsecutiveFailures() != 0 {
		t.Errorf("after Reset: known %v, LastError %v, ConsecutiveFailures %d", known, h.LastError(), h.ConsecutiveFailures())
	}
	// The thresholds survive Reset: one failure is not yet a verdict.
	if _, changed := h.Observe(e1); changed {
		t.Errorf("after Reset, one failure changed the verdict with FailuresToBad 2")
	}
}

func TestThreshold(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name   string
		limit  float64
		cycles int
		values []float64
		want   string // one character per value: 'x' exceeded, '.' not
	}{
		{name: "disabled", limit: 0, cycles: 1, values: []float64{1e12, 1e12}, want: ".."},
		{name: "sustained", limit: 2, cycles: 3, values: []float64{3, 3, 3, 3}, want: "..xx"},
		{name: "interrupted", limit: 2, cycles: 3, values: []float64{3, 3, 1, 3, 3, 3}, want: ".....x"},
		{name: "equal is within", limit: 2, cycles: 1, values: []float64{2, 2.0001}, want: ".x"},
		{name: "cycles below one mean one", limit: 2, cycles: 0, values: []float64{3, 1, 3}, want: "x.x"},
		{name: "NaN breaks the run", limit: 2, cycles: 2, values: []float64{3, nan, 3, 3}, want: "...x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			th := Threshold{Limit: tt.limit, Cycles: tt.cycles}
			got := make([]byte, len(tt.values))
			for i, v := range tt.values {
				got[i] = '.'
				if th.Observe(v) {
					got[i] = 'x'
				}
			}
			if string(got) != tt.want {
				t.Errorf("values %v gave %s, want %s", tt.values, got, tt.want)
			}
		})
	}

	th := Threshold{Limit: 2, Cycles: 2}
	th.Observe(3)
	th.Reset()
	if th.Observe(3) {
		t.Error("exceeded right after Reset")
	}
}
