package dispatch

import (
	"context"
	"fmt"
	"slices"
	"strconv"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/store"
)

// Shrink gives the ranks of c that are still alive a new communicator of
// their own, as ncclCommShrink and ULFM's MPI_Comm_shrink do: after a
// collective failed with a *core.PeerError because a rank died, every
// surviving rank calls Shrink, and each gets the same communicator of the
// survivors, ranked in their old order (rank 0 among them is the lowest
// surviving rank), on the backend that fits their nodes, as a group's is
// chosen (see Split). c stays failed: Close it, before or after using the
// new communicator.
//
// The survivors agree on who is alive through the store: every rank holds
// an ephemeral key there that the store deletes when the rank's connection
// closes (its process exited or was killed). Shrink waits until every
// rank of c has either called Shrink or lost its key, so a rank that is
// alive but does not call Shrink holds the others up until ctx ends or
// the timeout passes, and is then named in a *core.PeerError. A rank that
// dies after it called Shrink is counted in; the new communicator then
// fails naming it, and its survivors can Shrink again.
//
// Shrink is collective like Split and NewGroup: the survivors make it in
// the same order as their other group calls on c. It must not run at the
// same time as c's Close.
//
// # Limits
//
//   - The store must outlive the rank that died. Under gocollrun the
//     launcher serves the store; with WithStore the caller does; otherwise
//     rank 0 serves it, and when rank 0 dies the store dies with it: Shrink
//     then fails (the error says so) and the job must be restarted. Any
//     other rank may die.
//   - The launcher must keep the survivors running: gocollrun does with
//     -on-failure=continue, and otherwise stops the whole job when a rank
//     fails.
//   - Shrink needs the store's ephemeral keys, which the store client Init
//     dials has (and a store.Client passed to WithStore); on another store
//     it fails with an error wrapping core.ErrUnsupported.
//
// A world communicator hands its store connection (and, on the rank that
// serves the store, the server) to the communicator Shrink returns, so
// that closing the old one does not cut the new one off; the new one
// closes them, and its rank 0 waits for the survivors in Close as Init's
// rank 0 does.
func (c *Comm) Shrink(ctx context.Context) (*Comm, error) {
	n := c.grp.calls.Add(1)
	prefix := "group/" + strconv.FormatInt(n, 10) + "/"
	op := fmt.Sprintf("shrink #%d", n)
	if !c.live {
		return nil, fmt.Errorf("dispatch: %s: the store cannot tell which ranks are alive (it keeps no ephemeral keys; "+
			"Init's own store client, or a *store.Client passed to WithStore, does): %w", op, core.ErrUnsupported)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := c.store.Set(ctx, prefix+"here/"+strconv.Itoa(c.rank), nil); err != nil {
		return nil, c.storeLost(op, err)
	}
	survivors, err := c.survivors(ctx, op, prefix)
	if err != nil {
		return nil, err
	}
	g, err := c.derive(ctx, survivors, prefix+"s/", "s"+strconv.FormatInt(n, 10))
	if err != nil {
		return nil, err
	}
	g.client, g.server = c.client, c.server
	c.client, c.server = nil, nil
	g.log.Debug("gocoll: shrunk", "from", c.size, "to", g.size, "survivors", survivors)
	return g, nil
}

// survivors waits until every rank has set its "here" key under prefix
// or lost its "alive" key, and returns the ranks whose "here" key is set.
// Every survivor computes the same list: a "here" key, once set, stays,
// and a rank whose "alive" key is gone can set nothing any more (its
// connection closed, and the store applied all it had sent before it
// dropped the key), so a rank seen without either never gets a "here".
func (c *Comm) survivors(ctx context.Context, op, prefix string) ([]int, error) {
	pending := make([]int, c.size)
	for r := range pending {
		pending[r] = r
	}
	var dead []int
	for len(pending) > 0 {
		keys := make([]string, len(pending))
		guards := make([]string, len(pending))
		for i, r := range pending {
			keys[i] = prefix + "here/" + strconv.Itoa(r)
			guards[i] = "alive/" + strconv.Itoa(r)
		}
		_, lost, err := store.MultiGetGuardedFrom(ctx, c.store, keys, guards)
		if err != nil {
			if ctx.Err() != nil {
				var late []int
				for _, i := range store.Missing(ctx, c.store, keys...) {
					late = append(late, pending[i])
				}
				return nil, &core.PeerError{Op: op + " (alive, but not shrinking)", Ranks: late, Err: ctx.Err()}
			}
			return nil, c.storeLost(op, err)
		}
		if lost == nil {
			break
		}
		gone := aliveRanks(lost)
		dead = append(dead, gone...)
		pending = slices.DeleteFunc(pending, func(r int) bool { return slices.Contains(gone, r) })
	}
	var alive []int
	for r := range c.size {
		if !slices.Contains(dead, r) {
			alive = append(alive, r)
		}
	}
	return alive, nil
}

// storeLost wraps a store error of Shrink with what it most likely means.
func (c *Comm) storeLost(op string, err error) error {
	return fmt.Errorf("dispatch: %s: rank %d cannot reach the store (%w); unless the launcher serves it "+
		"(gocollrun) or WithStore gave one, rank 0 serves the store, and when rank 0 dies the survivors "+
		"cannot meet again: restart the job", op, c.rank, err)
}
