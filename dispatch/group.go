package dispatch

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/store"
)

// groupState is what a communicator knows about its place among others.
type groupState struct {
	// worldRanks[r] is the world rank of this communicator's rank r; nil
	// for a world communicator, where they are equal.
	worldRanks []int
	// backend is the backend the world was asked for ("auto", "shm",
	// "tcp", "kv"); groups and shrunk communicators ask for the same.
	backend string
	// calls counts this communicator's Split, NewGroup and Shrink calls:
	// every rank makes them in the same order, so the count names the call
	// and its store namespace alike on every rank, with no extra agreement.
	calls atomic.Int64
}

// groupArgs is what a rank passed to Split or NewGroup, as its peers read
// it from the store.
type groupArgs struct {
	Call    string `json:"call"` // "split" or "new_group"
	Color   int    `json:"color,omitempty"`
	Key     int    `json:"key,omitempty"`
	Ranks   []int  `json:"ranks,omitempty"`   // sorted
	Invalid string `json:"invalid,omitempty"` // why this rank's own arguments are wrong
}

// WorldRank is this rank's rank in the world communicator (Init's) that
// this communicator descends from; Rank for the world itself.
func (c *Comm) WorldRank() int {
	if c.grp.worldRanks == nil {
		return c.rank
	}
	return c.grp.worldRanks[c.rank]
}

// Ranks returns the world rank of each rank of this communicator, in
// order of rank (torch's get_process_group_ranks): 0..Size-1 for the world.
func (c *Comm) Ranks() []int {
	if c.grp.worldRanks == nil {
		rs := make([]int, c.size)
		for i := range rs {
			rs[i] = i
		}
		return rs
	}
	return slices.Clone(c.grp.worldRanks)
}

// Split partitions the communicator's ranks into groups, as MPI_Comm_split
// and ncclCommSplit do: ranks passing the same color form one group, in
// which they are ranked by key, ties broken by their rank here. A rank
// passing a negative color joins no group and gets nil, nil (MPI's
// MPI_UNDEFINED, NCCL's NCCL_SPLIT_NOCOLOR). Every rank of c must call
// Split (see Groups below).
//
// It returns once this rank's group is ready, or with a *core.PeerError
// naming the ranks of c that did not take part (they died, or had not
// called it when ctx ended or the timeout passed), or a
// *core.MismatchError when a rank called NewGroup instead.
//
// # Groups
//
// A group is a communicator among some ranks of another (its parent): the
// world communicator Init returns, a group, or a communicator Shrink
// returned. Split makes them the MPI and NCCL way, NewGroup the torch way.
// Both are collective over the parent: every rank of the parent calls
// them, in the same order as its other Split, NewGroup and Shrink calls on
// that parent, even ranks that end up in no group.
//
// A group is a whole communicator: it has its own namespace in the store
// (under its parent's, so that nested groups never collide), picks its own
// backend from its own members' nodes (shm when they share one node, the
// hierarchical backend or tcp across nodes, unless the world was given a
// backend by name, which its groups then use too), and owns its own
// segments and connections, so groups run independently of each other and
// of their parent, from different goroutines if need be. Its Rank and Size
// are within the group, and its errors name ranks of the group; WorldRank
// and Ranks translate them to the world's.
//
// A group uses the store connection of the world communicator it descends
// from: close groups before the world (or keep the world open while they
// run). Closing a group does not wait for its other members.
func (c *Comm) Split(ctx context.Context, color, key int) (*Comm, error) {
	n := c.grp.calls.Add(1)
	prefix := "group/" + strconv.FormatInt(n, 10) + "/"
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	op := fmt.Sprintf("split #%d", n)
	all, err := c.exchange(ctx, op, prefix, groupArgs{Call: "split", Color: color, Key: key})
	if err != nil {
		return nil, err
	}
	for r, a := range all {
		if a.Call != "split" {
			return nil, &core.MismatchError{Seq: uint64(n), Field: "group call", Rank: c.rank, Mine: "split", Peer: r, Theirs: a.Call}
		}
	}
	if color < 0 {
		return nil, nil
	}
	var members []int
	for r, a := range all {
		if a.Color == color {
			members = append(members, r)
		}
	}
	slices.SortStableFunc(members, func(a, b int) int { return cmp.Compare(all[a].Key, all[b].Key) })
	id := "g" + strconv.FormatInt(n, 10) + "c" + strconv.Itoa(color)
	return c.derive(ctx, members, prefix+"c"+strconv.Itoa(color)+"/", id)
}

// NewGroup makes a group of the given ranks of c, as torch's new_group
// does: every rank of c calls it with the same ranks (in any order; the
// group ranks them in increasing order), and the ranks not among them get
// nil, nil. Every rank of c must call NewGroup, members or not (see
// Groups at Split).
//
// It returns once the group is ready, or with an error wrapping
// core.ErrInvalid for ranks that are empty, out of range or repeated (on
// every rank alike: its peers get a *core.MismatchError on "argument"
// naming it when only it passed them), a *core.MismatchError on "ranks"
// naming a rank that passed other ranks, or a *core.PeerError naming the
// ranks of c that did not take part.
func (c *Comm) NewGroup(ctx context.Context, ranks []int) (*Comm, error) {
	n := c.grp.calls.Add(1)
	prefix := "group/" + strconv.FormatInt(n, 10) + "/"
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	mine := groupArgs{Call: "new_group", Ranks: slices.Sorted(slices.Values(ranks))}
	var invalid error
	switch {
	case len(ranks) == 0:
		invalid = fmt.Errorf("dispatch: new group: no ranks: name at least one (for every rank, use the communicator itself): %w", core.ErrInvalid)
	case mine.Ranks[0] < 0 || mine.Ranks[len(ranks)-1] >= c.size:
		invalid = fmt.Errorf("dispatch: new group of ranks %v: every rank must be in [0, %d): %w", ranks, c.size, core.ErrInvalid)
	case len(slices.Compact(slices.Clone(mine.Ranks))) != len(ranks):
		invalid = fmt.Errorf("dispatch: new group of ranks %v: a rank is named twice: %w", ranks, core.ErrInvalid)
	}
	if invalid != nil {
		mine.Invalid = invalid.Error()
	}
	op := fmt.Sprintf("new group #%d", n)
	all, err := c.exchange(ctx, op, prefix, mine)
	if err != nil {
		return nil, err
	}
	if invalid != nil {
		return nil, invalid
	}
	for r, a := range all {
		switch {
		case a.Call != "new_group":
			return nil, &core.MismatchError{Seq: uint64(n), Field: "group call", Rank: c.rank, Mine: "new_group", Peer: r, Theirs: a.Call}
		case a.Invalid != "":
			return nil, &core.MismatchError{Seq: uint64(n), Field: "argument", Rank: c.rank, Mine: fmt.Sprint(mine.Ranks), Peer: r, Theirs: "ranks " + a.Invalid}
		case !slices.Equal(a.Ranks, mine.Ranks):
			return nil, &core.MismatchError{Seq: uint64(n), Field: "ranks", Rank: c.rank, Mine: fmt.Sprint(mine.Ranks), Peer: r, Theirs: fmt.Sprint(a.Ranks)}
		}
	}
	if !slices.Contains(mine.Ranks, c.rank) {
		return nil, nil
	}
	return c.derive(ctx, mine.Ranks, prefix+"g/", "g"+strconv.FormatInt(n, 10))
}

// exchange publishes this rank's arguments to a group call under prefix
// and returns every rank's, in order of rank. A rank whose store
// connection is gone (it died) ends the wait at once, and a rank that has
// not come when ctx ends is named too, in a *core.PeerError.
func (c *Comm) exchange(ctx context.Context, op, prefix string, mine groupArgs) ([]groupArgs, error) {
	b, err := json.Marshal(mine)
	if err != nil {
		return nil, fmt.Errorf("dispatch: %s: %w", op, err)
	}
	if err := c.store.Set(ctx, prefix+"arg/"+strconv.Itoa(c.rank), b); err != nil {
		return nil, fmt.Errorf("dispatch: %s: rank %d: publishing its arguments in the store: %w", op, c.rank, err)
	}
	keys := make([]string, c.size)
	for r := range keys {
		keys[r] = prefix + "arg/" + strconv.Itoa(r)
	}
	vals, err := c.waitRanks(ctx, op, keys)
	if err != nil {
		return nil, err
	}
	all := make([]groupArgs, c.size)
	for r, v := range vals {
		if err := json.Unmarshal(v, &all[r]); err != nil {
			return nil, fmt.Errorf("dispatch: %s: rank %d's arguments in the store are corrupt (%v): is another job using this store?", op, r, err)
		}
	}
	return all, nil
}

// waitRanks waits until keys[r] exists for every rank r and returns their
// values, or a *core.PeerError naming the ranks that will not set theirs
// (their "alive/<rank>" key is gone) or had not when ctx ended.
func (c *Comm) waitRanks(ctx context.Context, op string, keys []string) ([][]byte, error) {
	var guards []string
	if c.live {
		guards = make([]string, len(keys))
		for r := range guards {
			guards[r] = "alive/" + strconv.Itoa(r)
		}
	}
	vals, lost, err := store.MultiGetGuardedFrom(ctx, c.store, keys, guards)
	switch {
	case lost != nil:
		return nil, &core.PeerError{Op: op, Ranks: aliveRanks(lost), Err: errGone}
	case err != nil && ctx.Err() != nil:
		return nil, &core.PeerError{Op: op, Ranks: store.Missing(ctx, c.store, keys...), Err: ctx.Err()}
	case err != nil:
		return nil, fmt.Errorf("dispatch: %s: rank %d: reading the other ranks' part from the store: %w", op, c.rank, err)
	}
	return vals, nil
}

// errGone is the cause of a PeerError for a rank whose store connection
// closed: its process exited or crashed.
var errGone = fmt.Errorf("its connection to the store closed (the process exited or died)")

// aliveRanks turns "alive/<rank>" keys into ranks, sorted.
func aliveRanks(keys []string) []int {
	var rs []int
	for _, k := range keys {
		if r, err := strconv.Atoi(strings.TrimPrefix(k, "alive/")); err == nil {
			rs = append(rs, r)
		}
	}
	slices.Sort(rs)
	return rs
}

// derive builds the communicator among members (ranks of c, in the order
// of their new ranks), this rank among them, with its store namespace
// under c's prefix and id in its job id.
func (c *Comm) derive(ctx context.Context, members []int, prefix, id string) (_ *Comm, err error) {
	me := slices.Index(members, c.rank)
	g := &Comm{
		rank: me, size: len(members),
		kvsAddr: c.kvsAddr, jobID: c.jobID + "-" + id, secret: c.secret, timeout: c.timeout,
		log: c.log.With("group", id, "group_rank", me), shmOpts: c.shmOpts,
		store: store.Prefix(c.store, prefix),
	}
	g.grp.backend = c.grp.backend
	g.grp.worldRanks = make([]int, len(members))
	for i, r := range members {
		g.grp.worldRanks[i] = r
		if c.grp.worldRanks != nil {
			g.grp.worldRanks[i] = c.grp.worldRanks[r]
		}
	}
	// The members' nodes, numbered by their lowest rank in the group, and
	// local ranks in the order of group ranks, as learnNodes does.
	nodeOf := make(map[int]int) // c's node -> g's
	for i, r := range members {
		pn := c.nodeOf(r)
		n, ok := nodeOf[pn]
		if !ok {
			n = len(g.nodes)
			nodeOf[pn] = n
			g.nodes = append(g.nodes, nil)
		}
		if i == me {
			g.nodeRank, g.localRank = n, len(g.nodes[n])
		}
		g.nodes[n] = append(g.nodes[n], i)
	}
	g.numNodes = len(g.nodes)
	g.localSize = len(g.nodes[g.nodeRank])

	if g.live, err = store.SetEphemeralIn(ctx, g.store, "alive/"+strconv.Itoa(me), nil); err != nil {
		return nil, fmt.Errorf("dispatch: group %s: rank %d: joining through the store: %w", id, me, err)
	}
	b, err := g.newBackend(ctx, g.grp.backend)
	if err != nil {
		return nil, fmt.Errorf("dispatch: group %s of ranks %v: %w", id, g.grp.worldRanks, err)
	}
	g.guard = core.NewGuard(b)
	g.log.Debug("gocoll: group ready", "size", g.size, "world_ranks", g.grp.worldRanks, "nodes", g.numNodes, "backend", b.Name())
	return g, nil
}

// nodeOf is the node rank r of c is on.
func (c *Comm) nodeOf(r int) int {
	for n, rs := range c.nodes {
		if slices.Contains(rs, r) {
			return n
		}
	}
	return -1 // not reached: nodes place every rank
}
