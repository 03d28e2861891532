package relay

import "testing"

func TestRelay(t *testing.T) {
	var got []int
	r := New(func(v int) { got = append(got, v) })
	r.Send(1)
	r.Detach()
	r.Send(2)
	if len(got) != 1 || got[0] != 1 {
		t.Fatalf("got %v, want [1]", got)
	}
	New[int](nil).Send(3) // no caller: nothing to do
}
