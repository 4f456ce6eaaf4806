package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/internal/checked"
	"github.com/gocoll/gocoll/internal/proctest"
	"github.com/gocoll/gocoll/tests/conform"
)

// Process groups (Split, NewGroup) and Shrink with real processes: every
// group's ranks, backend and every collective checked against the
// conformance reference.

func init() {
	proctest.Register("groups", groupsBody)
	proctest.Register("shrink", shrinkBody)
	proctest.Register("groupfail", groupFailBody)
}

// envNodes is the number of simulated nodes of a groups run (0: one).
const envNodes = "GOCOLL_TEST_NODES"

// groupBackends are the ways TestGroups runs: a backend forced by name,
// which every group then uses, and auto on two simulated nodes, where each
// group picks from its own members' nodes.
var groupBackends = []struct {
	name, label string
	nodes       int
}{
	{"shm", "shm", 0},
	{"tcp", "tcp", 0},
	{"auto", "auto-2nodes", 2},
}

func TestGroups(t *testing.T) {
	nps := allNPs
	if testing.Short() || raceEnabled {
		nps = shortNPs
	}
	for _, be := range groupBackends {
		t.Run(be.label, func(t *testing.T) {
			if why := available(be.name); why != "" {
				t.Skipf("dispatch offers no %q backend here: %s", be.name, why)
			}
			for _, np := range nps {
				t.Run(fmt.Sprintf("np%d", np), func(t *testing.T) {
					start := time.Now()
					proctest.Run(t, "groups", np, proctest.Timeout(4*time.Minute),
						proctest.Env(envBackend+"="+be.name, envNodes+"="+strconv.Itoa(be.nodes)),
						proctest.RankEnv(func(r int) []string {
							if be.nodes > 0 {
								return []string{"GOCOLL_NODE_ID=" + testNode(r, np, be.nodes)}
							}
							return nil
						}))
					t.Logf("%s np=%d: %v", be.label, np, time.Since(start).Round(time.Millisecond))
				})
			}
		})
	}
}

// testNode is the simulated node of rank r: blocks of ranks per node, as a
// launcher assigns them.
func testNode(r, np, nodes int) string { return fmt.Sprintf("testnode%d", r*nodes/np) }

// groupCases is what every group runs: every case of the registry (each
// collective x dtype x op), at a few small sizes, in and out of place,
// checked bit for bit by the conformance reference.
var groupCases = conform.Options{Sizes: []int{0, 1, 7, 300}, NoRandom: true, CaseTimeout: collTimeout}

// groupsBody makes odd splits, singletons, a split that leaves ranks out,
// two overlapping NewGroups and groups nested two deep, and runs every
// collective in each.
func groupsBody(ctx context.Context, r *proctest.Rank) error {
	be := os.Getenv(envBackend)
	nodes, _ := strconv.Atoi(os.Getenv(envNodes))
	c, err := initComm(ctx, r, be)
	if err != nil {
		return err
	}
	defer c.Close()
	me, np := r.Rank, r.Size
	node := func(w int) string {
		if nodes == 0 {
			return "one"
		}
		return testNode(w, np, nodes)
	}
	// check runs a group through its paces: its ranks are want (world
	// ranks by group rank), its backend fits them, and every collective
	// gives the reference's result.
	check := func(what string, g *dispatch.Comm, want []int) error {
		if g == nil {
			return fmt.Errorf("rank %d: %s: no group, want one of world ranks %v", me, what, want)
		}
		if !slices.Equal(g.Ranks(), want) || g.Size() != len(want) || g.WorldRank() != me || want[g.Rank()] != me {
			return fmt.Errorf("rank %d: %s: group rank %d of %d, world ranks %v; want world ranks %v", me, what, g.Rank(), g.Size(), g.Ranks(), want)
		}
		if wb := wantBackend(be, want, node); g.Backend() != wb {
			return fmt.Errorf("rank %d: %s of world ranks %v: backend %q, want %q", me, what, want, g.Backend(), wb)
		}
		if err := conform.Run(ctx, g, groupCases); err != nil {
			return fmt.Errorf("rank %d: %s of world ranks %v (%s): %w", me, what, want, g.Backend(), err)
		}
		return nil
	}

	// Odd split: three colors, ranked by descending rank.
	g, err := c.Split(ctx, me%3, np-me)
	if err != nil {
		return fmt.Errorf("rank %d: split by rank %% 3: %w", me, err)
	}
	defer g.Close()
	var want []int
	for w := np - 1; w >= 0; w-- {
		if w%3 == me%3 {
			want = append(want, w)
		}
	}
	if err := check("split by rank % 3", g, want); err != nil {
		return err
	}

	// Nested two deep: the first and last rank of the split group, then
	// a split of that by its own rank parity.
	ends := []int{0}
	if g.Size() > 1 {
		ends = append(ends, g.Size()-1)
	}
	nested, err := g.NewGroup(ctx, ends)
	if err != nil {
		return fmt.Errorf("rank %d: a new group inside the split group: %w", me, err)
	}
	if slices.Contains(ends, g.Rank()) {
		defer nested.Close()
		var wantN []int
		for _, e := range ends {
			wantN = append(wantN, g.Ranks()[e])
		}
		if err := check("new group of a split group's ends", nested, wantN); err != nil {
			return err
		}
		deeper, err := nested.Split(ctx, nested.Rank()%2, 0)
		if err != nil {
			return fmt.Errorf("rank %d: split of a nested group: %w", me, err)
		}
		defer deeper.Close()
		if err := check("split of a nested group", deeper, []int{wantN[nested.Rank()%2]}); err != nil {
			return err
		}
	} else if nested != nil {
		return fmt.Errorf("rank %d: not among %v of its split group, yet it got a nested group", me, ends)
	}

	// Singletons.
	single, err := c.Split(ctx, me, 0)
	if err != nil {
		return fmt.Errorf("rank %d: split into singletons: %w", me, err)
	}
	defer single.Close()
	if err := check("singleton", single, []int{me}); err != nil {
		return err
	}

	// The last rank passes no color and gets no group.
	color := 0
	if me == np-1 && np > 1 {
		color = -1
	}
	rest, err := c.Split(ctx, color, 0)
	if err != nil {
		return fmt.Errorf("rank %d: split leaving the last rank out: %w", me, err)
	}
	switch {
	case color < 0 && rest != nil:
		return fmt.Errorf("rank %d: passed a negative color but got a group of %v", me, rest.Ranks())
	case color >= 0:
		defer rest.Close()
		want = nil
		for w := range np {
			if w != np-1 || np == 1 {
				want = append(want, w)
			}
		}
		if err := check("split leaving the last rank out", rest, want); err != nil {
			return err
		}
	}

	// Two NewGroups that share the middle rank.
	mid := np / 2
	lo, hi := seq(0, mid+1), seq(mid, np)
	glo, err := c.NewGroup(ctx, lo)
	if err != nil {
		return fmt.Errorf("rank %d: new group %v: %w", me, lo, err)
	}
	rev := slices.Clone(hi)
	slices.Reverse(rev)
	ghi, err := c.NewGroup(ctx, rev) // any order: the group ranks them ascending
	if err != nil {
		return fmt.Errorf("rank %d: new group %v: %w", me, hi, err)
	}
	for _, x := range []struct {
		g     *dispatch.Comm
		ranks []int
	}{{glo, lo}, {ghi, hi}} {
		if !slices.Contains(x.ranks, me) {
			if x.g != nil {
				return fmt.Errorf("rank %d: not in %v, yet it got a group", me, x.ranks)
			}
			continue
		}
		defer x.g.Close()
		if err := check("overlapping new group", x.g, x.ranks); err != nil {
			return err
		}
	}
	return checkedAllreduce(ctx, c, me)
}

// TestGroupErrors: ranks that pass NewGroup different ranks all get a
// *core.MismatchError naming one that differs, and the parent still
// works; a rank killed before a Split is named by the others in a
// *core.PeerError long before the timeout, as its store connection closes.
func TestGroupErrors(t *testing.T) {
	for _, be := range []string{"shm", "tcp"} {
		t.Run(be, func(t *testing.T) {
			if why := available(be); why != "" {
				t.Skipf("dispatch offers no %q backend here: %s", be, why)
			}
			res := proctest.Run(t, "groupfail", 3, proctest.Timeout(2*time.Minute),
				proctest.Env(envBackend+"="+be), proctest.KillOnMark(2, "ready"))
			if !res[2].Killed {
				t.Errorf("rank 2 was not killed: %+v", res[2])
			}
		})
	}
}

func groupFailBody(ctx context.Context, r *proctest.Rank) error {
	c, err := initComm(ctx, r, os.Getenv(envBackend))
	if err != nil {
		return err
	}
	defer c.Close()
	me := r.Rank
	ranks := []int{0, 1}
	if me == 1 {
		ranks = []int{1, 2}
	}
	_, err = c.NewGroup(ctx, ranks)
	var mm *core.MismatchError
	switch {
	case !errors.As(err, &mm) || mm.Field != "ranks":
		return fmt.Errorf("rank %d: NewGroup with rank 1 passing other ranks: got %v, want a *core.MismatchError on ranks", me, err)
	case me != 1 && (mm.Peer != 1 || mm.Theirs != "[1 2]" || mm.Mine != "[0 1]"):
		return fmt.Errorf("rank %d: %v: want rank 1 and its ranks [1 2] named", me, err)
	case me == 1 && (mm.Peer == 1 || mm.Theirs != "[0 1]"):
		return fmt.Errorf("rank 1: %v: want another rank and its ranks [0 1] named", err)
	}
	if err := checkedAllreduce(ctx, c, me); err != nil {
		return fmt.Errorf("rank %d: after the mismatch: %w", me, err)
	}
	if me == 2 {
		r.Mark("ready") // proctest kills this process now
		<-ctx.Done()
		return ctx.Err()
	}
	start := time.Now()
	_, err = c.Split(ctx, 0, 0)
	var pe *core.PeerError
	if !errors.As(err, &pe) || !slices.Equal(pe.Ranks, []int{2}) {
		return fmt.Errorf("rank %d: Split with rank 2 dead: got %v, want a *core.PeerError naming rank 2", me, err)
	}
	if took := time.Since(start); took > collTimeout/2 {
		return fmt.Errorf("rank %d: Split took %v to name the dead rank; its store connection closed at once", me, took)
	}
	return nil
}

// seq is lo, lo+1, ..., hi-1.
func seq(lo, hi int) []int {
	var s []int
	for i := lo; i < hi; i++ {
		s = append(s, i)
	}
	return s
}

// wantBackend is the backend dispatch must pick for a group of world
// ranks whose nodes node names: the one asked for by name, or under auto
// shm on one node, tcp with one rank per node, shm+tcp otherwise.
func wantBackend(asked string, ranks []int, node func(int) string) string {
	if asked != "auto" {
		return asked
	}
	count := map[string]int{}
	for _, r := range ranks {
		count[node(r)]++
	}
	if len(count) == 1 {
		return "shm"
	}
	for _, n := range count {
		if n > 1 {
			return "shm+tcp"
		}
	}
	return "tcp"
}

// TestShrink kills a rank with SIGKILL while 4 ranks run allreduces; the 3
// survivors Shrink and run 1000 checked allreduces on what they get. Rank
// 0 is among the victims because proctest's store lives in the test
// process, as gocollrun's does in the launcher: only the rank that serves
// the store may not die (see dispatch.Comm.Shrink). Two ranks of 5 killed
// at once leave 3 survivors too. A group of every rank, made before the
// kill, is shrunk as well.
func TestShrink(t *testing.T) {
	for _, be := range []string{"shm", "tcp"} {
		t.Run(be, func(t *testing.T) {
			if why := available(be); why != "" {
				t.Skipf("dispatch offers no %q backend here: %s", be, why)
			}
			for _, tc := range []struct {
				np      int
				victims []int
			}{{4, []int{2}}, {4, []int{0}}, {5, []int{1, 3}}} {
				t.Run(fmt.Sprintf("np%d/victims%s", tc.np, joinInts(tc.victims)), func(t *testing.T) {
					opts := []proctest.Option{proctest.Timeout(2 * time.Minute),
						proctest.Env(envBackend+"="+be, envVictims+"="+joinInts(tc.victims))}
					for _, v := range tc.victims {
						opts = append(opts, proctest.KillOnMark(v, "running"))
					}
					res := proctest.Run(t, "shrink", tc.np, opts...)
					for _, r := range res {
						if slices.Contains(tc.victims, r.Rank) {
							if !r.Killed {
								t.Errorf("rank %d was not killed: %+v", r.Rank, r)
							}
							continue
						}
						t.Logf("rank %d: %v", r.Rank, r.Duration.Round(time.Millisecond))
					}
				})
			}
		})
	}
}

const envVictims = "GOCOLL_TEST_VICTIMS"

// shrinkTimeout bounds the waits of TestShrink's communicators: a backend
// that notices a dead peer only by its silence still answers within it.
const shrinkTimeout = 10 * time.Second

func shrinkBody(ctx context.Context, r *proctest.Rank) error {
	be := os.Getenv(envBackend)
	victims, err := parseInts(os.Getenv(envVictims))
	if err != nil {
		return err
	}
	c, err := initCommTimeout(ctx, r, be, shrinkTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	// A group of every rank, which is shrunk too: a group's ranks hold
	// alive keys of their own.
	g, err := c.NewGroup(ctx, seq(0, r.Size))
	if err != nil {
		return err
	}
	defer g.Close()
	for i := 0; ; i++ {
		if slices.Contains(victims, r.Rank) && i == 20 {
			// proctest kills this process now. Until it does, it must
			// not see another victim's death and Shrink itself.
			r.Mark("running")
			<-ctx.Done()
			return ctx.Err()
		}
		cctx, cancel := context.WithTimeout(ctx, shrinkTimeout)
		err := checkedAllreduce(cctx, c, r.Rank)
		cancel()
		if err == nil {
			continue
		}
		var pe *core.PeerError
		if !errors.As(err, &pe) || !slices.ContainsFunc(pe.Ranks, func(v int) bool { return slices.Contains(victims, v) }) {
			return fmt.Errorf("rank %d: allreduce #%d: want a *core.PeerError naming rank(s) %v: %w", r.Rank, i, victims, err)
		}
		break
	}
	start := time.Now()
	s, err := c.Shrink(ctx)
	if err != nil {
		return fmt.Errorf("rank %d: shrink: %w", r.Rank, err)
	}
	defer s.Close()
	took := time.Since(start)
	var want []int
	for w := range r.Size {
		if !slices.Contains(victims, w) {
			want = append(want, w)
		}
	}
	if !slices.Equal(s.Ranks(), want) || s.WorldRank() != r.Rank || s.Ranks()[s.Rank()] != r.Rank {
		return fmt.Errorf("rank %d: shrunk to rank %d of world ranks %v; want world ranks %v", r.Rank, s.Rank(), s.Ranks(), want)
	}
	if s.Backend() != be {
		return fmt.Errorf("rank %d: shrunk onto backend %q, want %q", r.Rank, s.Backend(), be)
	}
	// The old communicator stays failed; closing it must not cut the new
	// one off from the store.
	if err := c.Close(); err != nil {
		fmt.Printf("rank %d: closing the failed communicator: %v\n", r.Rank, err)
	}
	for i := range 1000 {
		if err := checked.Allreduce(ctx, s, i, 257); err != nil {
			return fmt.Errorf("rank %d: allreduce #%d after shrinking: %w", r.Rank, i, err)
		}
	}
	sg, err := g.Shrink(ctx)
	if err != nil {
		return fmt.Errorf("rank %d: shrinking the group of every rank: %w", r.Rank, err)
	}
	defer sg.Close()
	if !slices.Equal(sg.Ranks(), want) {
		return fmt.Errorf("rank %d: the shrunk group has world ranks %v, want %v", r.Rank, sg.Ranks(), want)
	}
	for i := range 100 {
		if err := checked.Allreduce(ctx, sg, i, 257); err != nil {
			return fmt.Errorf("rank %d: allreduce #%d on the shrunk group: %w", r.Rank, i, err)
		}
	}
	fmt.Printf("rank %d: shrink took %v, then 1000 allreduces on %s\n", r.Rank, took.Round(time.Millisecond), s.Backend())
	return nil
}
