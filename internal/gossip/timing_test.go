package gossip

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// BenchmarkDetection measures, for DefaultTiming and memberlist's own LAN
// defaults, how long until every survivor of a 5-node cluster sees a
// crashed node dead (one crash per op, so ns/op is the mean), with and
// without 5% packet loss, and counts false deaths (a live node declared
// dead) along the way. scripts/bench/gossip gives the percentiles.
func BenchmarkDetection(b *testing.B) {
	for _, c := range []struct {
		name string
		tm   Timing
	}{{"dhvisor", testTiming()}, {"memberlist-lan", MemberlistDefaultTiming()}} {
		for _, loss := range []float64{0, 0.05} {
			b.Run(fmt.Sprintf("%s/loss=%.0f%%", c.name, loss*100), func(b *testing.B) {
				falseDeaths, trial := 0, 0
				var total time.Duration
				for b.Loop() {
					d, fd := crashTrial(b, fmt.Sprintf("%s-%d-%d", c.name, int(loss*100), trial), c.tm, loss, 5)
					trial++
					total += d
					falseDeaths += fd
				}
				b.ReportMetric(0, "ns/op")
				b.ReportMetric(float64(total.Milliseconds())/float64(trial), "ms-to-dead")
				b.ReportMetric(float64(falseDeaths), "false-deaths")
			})
		}
	}
}

// crashTrial starts n nodes, crashes one, and returns how long until all
// survivors saw it dead, and how many times a survivor saw another
// survivor dead.
func crashTrial(t testing.TB, prefix string, tm Timing, loss float64, n int) (time.Duration, int) {
	nodes := startClusterWithin(t, 2*tm.PushPullInterval, prefix, n, withTiming(tm), withLoss(loss))
	defer func() {
		for _, nd := range nodes {
			_ = nd.Shutdown()
		}
	}()
	time.Sleep(time.Duration(rand.IntN(1000)) * time.Millisecond) // random phase
	victim := nodes[1+rand.IntN(n-1)]
	start := time.Now()
	_ = victim.Shutdown()
	var took time.Duration
	waitFor(t, 30*time.Second, func() (bool, string) {
		for _, nd := range nodes {
			if nd == victim {
				continue
			}
			if v, _ := viewOf(nd.Gossip, victim.name); v.State != NodeDead {
				return false, nd.name + " sees " + v.State
			}
		}
		took = time.Since(start)
		return true, ""
	})
	fd := 0
	for _, nd := range nodes {
		if nd != victim {
			fd += strings.Count(nd.logs.String(), "gossip: node dead") - 1
		}
	}
	return took, fd
}
