package dispatch

import (
	"context"
	"fmt"
	"strconv"

	"github.com/gocoll/gocoll/backends/hier"
	"github.com/gocoll/gocoll/backends/kv"
	"github.com/gocoll/gocoll/backends/shm"
	"github.com/gocoll/gocoll/backends/tcp"
	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/store"
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
		b, err := shm.New(ctx, world("shm/"), c.shmOpts...)
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
	case "hier":
		return c.newHier(ctx, world("tcp/"))
	}
	return nil, fmt.Errorf("dispatch: unknown backend %q", name)
}

// autoBackend is shm when every rank shares one node; across nodes it is
// hier (shm inside each node, tcp between them) when some node has
// several ranks, and tcp otherwise.
func (c *Comm) autoBackend() string {
	if c.numNodes == 1 {
		return "shm"
	}
	for _, n := range c.nodes {
		if len(n) > 1 {
			return "hier"
		}
	}
	return "tcp"
}

// newHier builds the hierarchical backend. Every rank builds its node's
// shm group first, then the tcp group of all ranks, then (leaders only)
// the tcp group of the leaders: the same order everywhere, so no rank
// waits in one group for a rank that is setting up another.
func (c *Comm) newHier(ctx context.Context, world core.Group) (_ core.Backend, err error) {
	var cfg hier.Config
	defer func() {
		if err != nil {
			for _, b := range []core.Backend{cfg.Local, cfg.World, cfg.Leaders} {
				if b != nil {
					b.Close()
				}
			}
		}
	}()
	node := "node" + strconv.Itoa(c.nodeRank)
	local := core.Group{Rank: c.localRank, Size: c.localSize, Store: store.Prefix(c.store, "shm/"+node+"/"),
		JobID: c.jobID + "-" + node, Secret: c.secret, Timeout: c.timeout}
	if cfg.Local, err = shm.New(ctx, local, c.shmOpts...); err != nil {
		return nil, fmt.Errorf("dispatch: starting the shm backend of node %d: %w", c.nodeRank, err)
	}
	if cfg.World, err = tcp.New(ctx, world); err != nil {
		return nil, fmt.Errorf("dispatch: starting the tcp backend: %w", err)
	}
	if c.localRank == 0 {
		leaders := core.Group{Rank: c.nodeRank, Size: c.numNodes, Store: store.Prefix(c.store, "tcp-leaders/"),
			JobID: c.jobID, Secret: c.secret, Timeout: c.timeout}
		if cfg.Leaders, err = tcp.New(ctx, leaders); err != nil {
			return nil, fmt.Errorf("dispatch: starting the tcp backend between node leaders: %w", err)
		}
	}
	cfg.Nodes = c.nodes
	cfg.Store = store.Prefix(c.store, "hier/")
	h, err := hier.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	return h, nil
}
