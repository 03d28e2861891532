package conncache

import (
	"errors"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc/credentials/insecure"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestCache(t *testing.T) {
	c := New(insecure.NewCredentials())
	a1, err := c.Get("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := c.Get("127.0.0.1:1")
	b, _ := c.Get("127.0.0.1:2")
	if a1 != a2 || a1 == b {
		t.Error("one connection per address expected")
	}
	c.Close()
	if _, err := c.Get("127.0.0.1:1"); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close: %v", err)
	}
}
