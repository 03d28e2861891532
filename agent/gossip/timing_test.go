package gossip

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDetectionTiming measures, for DefaultTiming and memberlist's own LAN
// defaults, how long until every survivor of a 5-node cluster sees a
// crashed node dead, with and without 5% packet loss, and counts false
// deaths (a live node declared dead) along the way. It takes minutes, so it
// only runs when asked:
//
//	DHVISOR_GOSSIP_TIMING=1 [DHVISOR_GOSSIP_TRIALS=10] [DHVISOR_GOSSIP_SOAK=60s] \
//	  go test -run TestDetectionTiming -v ./agent/gossip/
func TestDetectionTiming(t *testing.T) {
	if os.Getenv("DHVISOR_GOSSIP_TIMING") == "" {
		t.Skip("set DHVISOR_GOSSIP_TIMING=1 to measure failure detection")
	}
	trials, _ := strconv.Atoi(os.Getenv("DHVISOR_GOSSIP_TRIALS"))
	if trials <= 0 {
		trials = 10
	}
	soak, _ := time.ParseDuration(os.Getenv("DHVISOR_GOSSIP_SOAK"))
	type config struct {
		name string
		tm   Timing
	}
	variant := func(name string, f func(*Timing)) config {
		tm := testTiming()
		f(&tm)
		return config{name, tm}
	}
	configs := []config{
		{"dhvisor-default", testTiming()},
		{"memberlist-lan", MemberlistDefaultTiming()},
		variant("probe500", func(tm *Timing) { tm.ProbeInterval = 500 * time.Millisecond }),
		variant("probe400", func(tm *Timing) { tm.ProbeInterval = 400 * time.Millisecond }),
		variant("probe300", func(tm *Timing) {
			tm.ProbeInterval, tm.ProbeTimeout = 300*time.Millisecond, 150*time.Millisecond
		}),
		variant("susp2", func(tm *Timing) { tm.SuspicionMult = 2 }),
		variant("susp4", func(tm *Timing) { tm.SuspicionMult = 4 }),
	}
	if only := os.Getenv("DHVISOR_GOSSIP_CONFIG"); only != "" {
		want := strings.Split(only, ",")
		configs = slices.DeleteFunc(configs, func(c config) bool { return !slices.Contains(want, c.name) })
	} else {
		configs = configs[:2]
	}
	for _, c := range configs {
		for _, loss := range []float64{0, 0.05} {
			var ds []time.Duration
			falseDeaths := 0
			for trial := range trials {
				d, fd := crashTrial(t, fmt.Sprintf("%s-%d-%d", c.name, int(loss*100), trial), c.tm, loss, 5)
				ds = append(ds, d)
				falseDeaths += fd
			}
			slices.Sort(ds)
			t.Logf("%-16s loss %2.0f%%: dead everywhere after min %v median %v max %v (n=%d); false deaths %d",
				c.name, loss*100, ds[0].Round(10*time.Millisecond), ds[len(ds)/2].Round(10*time.Millisecond),
				ds[len(ds)-1].Round(10*time.Millisecond), len(ds), falseDeaths)
		}
		if soak > 0 {
			for _, loss := range []float64{0.05, 0.10} {
				fd := soakTrial(t, c.name, c.tm, loss, 5, soak)
				t.Logf("%-16s loss %2.0f%%: %v soak, 5 nodes: false deaths %d", c.name, loss*100, soak, fd)
			}
		}
	}
}

// crashTrial starts n nodes, crashes one, and returns how long until all
// survivors saw it dead, and how many times a survivor saw another
// survivor dead.
func crashTrial(t *testing.T, prefix string, tm Timing, loss float64, n int) (time.Duration, int) {
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

func soakTrial(t *testing.T, prefix string, tm Timing, loss float64, n int, d time.Duration) int {
	nodes := startClusterWithin(t, 2*tm.PushPullInterval, fmt.Sprintf("soak-%s-%d", prefix, int(loss*100)), n, withTiming(tm), withLoss(loss))
	defer func() {
		for _, nd := range nodes {
			_ = nd.Shutdown()
		}
	}()
	time.Sleep(d)
	fd := 0
	for _, nd := range nodes {
		fd += strings.Count(nd.logs.String(), "gossip: node dead")
	}
	return fd
}
