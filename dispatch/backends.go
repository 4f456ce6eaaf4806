package dispatch

import (
	"context"
	"fmt"

	"github.com/gocoll/gocoll/backends/kv"
	"github.com/gocoll/gocoll/backends/shm"
	"github.com/gocoll/gocoll/backends/tcp"
	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/dispatch/store"
)

// This file is the one place that knows the backends.

// newBackend builds the backend named by WithBackend/GOCOLL_BACKEND.
// Every rank reaches the same choice: it depends only on values all ranks
// share (the name, which every rank must be given alike, and the node
// layout read from the store).
func (c *Comm) newBackend(ctx context.Context, name string) (core.Backend, error) {
	if name == "auto" {
		name = c.autoBackend()
	}
	world := func(prefix string) core.Group {
		return core.Group{Rank: c.rank, Size: c.size, Store: store.Prefix(c.store, prefix),
			JobID: c.jobID, Secret: c.secret, Timeout: c.timeout}
	}
	switch name {
	case "kv":
		b, err := kv.New(ctx, world("kv/"))
		if err != nil {
			return nil, fmt.Errorf("dispatch: starting the kv backend: %w", err)
		}
		return b, nil
	case "shm":
		if c.numNodes > 1 {
			return nil, fmt.Errorf("dispatch: backend shm needs every rank on one node, but the ranks span %d nodes "+
				"(node ids come from hostname and boot id, or %s); use auto or tcp", c.numNodes, EnvNodeID)
		}
		b, err := shm.New(ctx, world("shm/"))
		if err != nil {
			return nil, fmt.Errorf("dispatch: starting the shm backend: %w", err)
		}
		return b, nil
	case "tcp":
		b, err := tcp.New(ctx, world("tcp/"))
		if err != nil {
			return nil, fmt.Errorf("dispatch: starting the tcp backend: %w", err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("dispatch: unknown backend %q", name)
}

// autoBackend is shm when every rank shares one node, tcp otherwise.
func (c *Comm) autoBackend() string {
	if c.numNodes == 1 {
		return "shm"
	}
	return "tcp"
}
