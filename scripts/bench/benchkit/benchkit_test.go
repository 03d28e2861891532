package benchkit

import "testing"

func TestSummariseNearestRank(t *testing.T) {
	v := make([]float64, 0, 100)
	for i := 100; i >= 1; i-- {
		v = append(v, float64(i))
	}
	s := Summarise(v)
	if s.N != 100 || s.P50 != 50 || s.P90 != 90 || s.P99 != 99 || s.Max != 100 || s.Mean != 50.5 {
		t.Fatalf("Summarise = %+v", s)
	}
	if s := Summarise([]float64{7, 3}); s.P99 != 7 || s.P50 != 3 {
		t.Fatalf("two samples: %+v (p99 of fewer than 100 is the max)", s)
	}
	if (Summarise(nil) != Stats{}) {
		t.Fatal("empty input")
	}
}
