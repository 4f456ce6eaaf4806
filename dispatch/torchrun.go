package dispatch

import (
	"context"
	"fmt"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/store/c10d"
)

// Under torchrun nothing needs exporting: Init reads what torchrun's
// elastic agent tells its workers.
//
//   - Default (static) rendezvous: the agent serves torch's c10d TCPStore
//     at MASTER_ADDR:MASTER_PORT and sets TORCHELASTIC_USE_AGENT_STORE=True.
//     Every rank, rank 0 included, dials that store (package store/c10d)
//     instead of serving gocoll's own there, and keeps its keys under
//     "gocoll-torchrun/<TORCHELASTIC_RUN_ID>/attempt_<TORCHELASTIC_RESTART_COUNT>/",
//     so that they cannot collide with torch's keys (torch's workers use
//     "/worker/attempt_<n>/", the agent "torchelastic/...") and a group
//     restarted by the agent, which keeps its store across restarts,
//     never reads the keys of the attempt before. Unless GOCOLL_SECRET is
//     set, rank 0 makes a fresh secret for gocoll's own TCP connections
//     and publishes it in that store: the secret is exactly as protected
//     as torchrun's store itself, which has no authentication, so anyone
//     who can reach MASTER_PORT can read it, as they can already read and
//     write everything torch keeps there.
//   - --standalone and --rdzv_backend=c10d: the agent rendezvouses
//     elsewhere, sets TORCHELASTIC_USE_AGENT_STORE=False and hands the
//     workers a free MASTER_PORT, where rank 0 serves gocoll's store as
//     under any other launcher. Unless GOCOLL_SECRET is set, the store's
//     secret is derived from TORCHELASTIC_RUN_ID and MASTER_ADDR:
//     MASTER_PORT, which every worker of the rendezvous round shares.
//     Under --standalone the run id is a fresh random UUID that only the
//     job's user sees (in the processes' environments, and in torchrun's
//     log at INFO level, which is off by default), so other users cannot
//     reach the store; under --rdzv_backend=c10d it is --rdzv_id ("none"
//     if not given), which anyone who sees the command line knows: then
//     the store is as open as torch's own env:// TCPStore, which has no
//     authentication at all. Set GOCOLL_SECRET on every node to close it.
const (
	// envAgentStore is "True" when the worker's MASTER_PORT is the
	// agent's own c10d store.
	envAgentStore = "TORCHELASTIC_USE_AGENT_STORE"
	// envRunID is the rendezvous id (--rdzv_id; a UUID under
	// --standalone); torchrun always sets it.
	envRunID = "TORCHELASTIC_RUN_ID"
	// envRestartCount counts the times the agent restarted its workers.
	envRestartCount = "TORCHELASTIC_RESTART_COUNT"
)

// torchrunResolve completes a launch that torchrun started (its
// TORCHELASTIC_RUN_ID is set): where the ranks meet and, where the user
// gave none, the secret. Options that name a store or a master win.
func torchrunResolve(o *options, env envLookup, l *launch) error {
	runID, ok := env(envRunID)
	if !ok || l.source != "torchrun" || o.store != nil || o.master != "" || l.master == "" {
		return nil
	}
	agent, _ := env(envAgentStore)
	switch agent {
	case "True", "False", "":
	default:
		return fmt.Errorf("dispatch: %s=%q: torchrun sets True or False", envAgentStore, agent)
	}
	if agent == "True" {
		restarts := "0"
		if v, ok := env(envRestartCount); ok && v != "" {
			restarts = v
		}
		l.agentStore = true
		l.launcherStore = false
		l.agentPrefix = "gocoll-torchrun/" + runID + "/attempt_" + restarts + "/"
		return nil
	}
	if l.secret == nil {
		l.secret = []byte("gocoll torchrun secret/" + runID + "/" + l.master)
	}
	return nil
}

// connectAgentStore dials torchrun's agent store and returns this job's
// namespace in it. Init's rank 0 then makes the secret (shareInfo), as it
// does for a store given with WithStore.
func (c *Comm) connectAgentStore(ctx context.Context, l *launch) (core.Store, error) {
	cl, err := c10d.Dial(ctx, l.master)
	if err != nil {
		return nil, fmt.Errorf("dispatch: rank %d: torchrun says its agent serves the store at MASTER_ADDR:MASTER_PORT=%s (%s=True): %w",
			l.rank, l.master, envAgentStore, err)
	}
	c.agent = cl
	c.kvsAddr = l.master
	return cl.WithPrefix(l.agentPrefix), nil
}
