package shm

import (
	"context"

	"github.com/gocoll/gocoll/core"
)

// Run, Refuse and Abort adapt the backend to core.Backend while it still
// checks requests itself in Do; they go once it trusts core.Check.

// Run implements core.Backend.
func (b *Backend) Run(ctx context.Context, req *core.Request) error { return b.Do(ctx, req) }

// Refuse implements core.Backend.
func (b *Backend) Refuse(ctx context.Context, req *core.Request) error { return b.Do(ctx, req) }

// Abort implements core.Backend.
func (b *Backend) Abort(cause error) {}
