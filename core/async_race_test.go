//go:build race

package core

import (
	"context"
	"errors"
	"testing"
)

// TestStartedBufferReuse: in race builds, a send buffer written while its
// call is in flight fails the call.
func TestStartedBufferReuse(t *testing.T) {
	l := newLog(0, 2)
	g := NewGuard(l)
	defer g.Close()
	l.gate.Lock()
	req := idReq(2)
	h, err := g.Start(context.Background(), *req)
	if err != nil {
		t.Fatal(err)
	}
	req.Send[0] = 1 // too early: the call owns it
	l.gate.Unlock()
	if err := h.Wait(context.Background()); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Wait = %v, want ErrInvalid for a send buffer written in flight", err)
	}
}
