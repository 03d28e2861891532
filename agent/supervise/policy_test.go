package supervise

import (
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/internal/config"
)

func TestDecideRestart(t *testing.T) {
	pol := config.RestartPolicy{
		MinUptime:      config.Duration(10 * time.Second),
		BackoffInitial: config.Duration(time.Second),
		BackoffMax:     config.Duration(8 * time.Second),
		Limit:          3,
		Window:         config.Duration(time.Minute),
	}
	now := time.Unix(1000, 0)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	half := func() float64 { return 0.5 } // jitter factor exactly 1
	tests := []struct {
		name      string
		uptime    time.Duration
		fast      int
		recent    []time.Time
		wantDelay time.Duration
		wantFast  int
		giveUp    bool
	}{
		{name: "long run restarts at once", uptime: time.Hour, fast: 4, wantDelay: 0, wantFast: 0},
		{name: "first fast failure", uptime: time.Second, wantDelay: time.Second, wantFast: 1},
		{name: "third fast failure doubles twice", uptime: time.Second, fast: 2, wantDelay: 4 * time.Second, wantFast: 3},
		{name: "backoff capped", uptime: time.Second, fast: 9, wantDelay: 8 * time.Second, wantFast: 10},
		{name: "old restarts fall out of the window", uptime: time.Hour, recent: []time.Time{ago(2 * time.Minute), ago(90 * time.Second), ago(time.Minute)}, wantDelay: 0},
		{name: "limit reached", uptime: time.Hour, recent: []time.Time{ago(30 * time.Second), ago(20 * time.Second), ago(time.Second)}, giveUp: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decideRestart(pol, tt.uptime, tt.fast, tt.recent, now, half)
			if d.giveUp != tt.giveUp {
				t.Fatalf("giveUp = %v, want %v", d.giveUp, tt.giveUp)
			}
			if tt.giveUp {
				return
			}
			if d.delay != tt.wantDelay || d.fastFailures != tt.wantFast {
				t.Fatalf("delay %v fast %d; want %v %d", d.delay, d.fastFailures, tt.wantDelay, tt.wantFast)
			}
			if last := d.recent[len(d.recent)-1]; !last.Equal(now) {
				t.Fatalf("this restart not recorded: %v", d.recent)
			}
		})
	}
}

func TestJitterBounds(t *testing.T) {
	pol := config.RestartPolicy{BackoffInitial: config.Duration(time.Second), BackoffMax: config.Duration(time.Minute), MinUptime: config.Duration(time.Minute), Window: config.Duration(time.Minute)}
	for _, j := range []float64{0, 0.999} {
		d := decideRestart(pol, 0, 0, nil, time.Now(), func() float64 { return j })
		if d.delay < 800*time.Millisecond || d.delay > 1200*time.Millisecond {
			t.Fatalf("jitter %v gave delay %v, want within ±20%% of 1s", j, d.delay)
		}
	}
}
