package dispatch

import (
	"context"

	"github.com/gocoll/gocoll/core"
)

var _ core.Starter = (*Comm)(nil)

// Start issues one call without blocking and returns its handle; see
// core.Guard.Start for the rules (program order, checked at start, the
// buffers belong to the call until it completes). The typed start forms
// (coll.StartAllreduceFloat32, ...) call it.
func (c *Comm) Start(ctx context.Context, req core.Request) (core.Handle, error) {
	return c.guard.Start(ctx, req)
}

// StartBatch issues a batch of sends and recvs completed together; see
// core.Guard.StartBatch.
func (c *Comm) StartBatch(ctx context.Context, reqs []*core.Request) (core.Handle, error) {
	return c.guard.StartBatch(ctx, reqs)
}

// Batch runs a batch of sends and recvs and waits for all of them; see
// core.Guard.StartBatch.
func (c *Comm) Batch(ctx context.Context, reqs ...*core.Request) error {
	h, err := c.guard.StartBatch(ctx, reqs)
	if err != nil {
		return err
	}
	return h.Wait(ctx)
}

// Abort fails every call in flight on this communicator (started ones
// included) and every later one, on every rank: this rank's calls with an
// error wrapping core.ErrAborted, the peers' with a *core.PeerError naming
// this rank, as soon as their backend hears of it (at once on shm, which
// marks this rank failed in the shared segment, and on tcp, which tells
// every peer on its control connection). It may be called from any
// goroutine; the communicator must then be closed.
func (c *Comm) Abort() {
	c.guard.Abort(core.ErrAborted)
}
