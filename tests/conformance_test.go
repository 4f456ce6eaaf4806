package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/memstore"
	"github.com/gocoll/gocoll/internal/proctest"
	"github.com/gocoll/gocoll/kernel"
	"github.com/gocoll/gocoll/tests/conform"
)

func TestMain(m *testing.M) {
	proctest.Register("conform", conformBody)
	proctest.Register("mismatch", mismatchBody)
	proctest.Register("absent", absentBody)
	proctest.Register("killed", killedBody)
	proctest.Main(m)
}

// Variables the parent passes to the ranks.
const (
	envBackend = "GOCOLL_TEST_BACKEND" // dispatch.WithBackend's argument
	envSizes   = "GOCOLL_TEST_SIZES"   // conform.Options.Sizes, comma-separated
	envFast    = "GOCOLL_TEST_FAST"    // "1": conform without the random and in-place passes
	envRandom  = "GOCOLL_TEST_RANDOM"  // conform.Options.RandomSizes, comma-separated
	envBytes   = "GOCOLL_TEST_BYTES"   // conform.Options.Bytes, comma-separated; set: exact pass only
	envDTypes  = "GOCOLL_TEST_DTYPES"  // only the cases of these dtypes (and barrier), comma-separated names
	envField   = "GOCOLL_TEST_FIELD"   // mismatch: "count" or "dtype"
)

// collTimeout bounds each collective and Init in the ranks: long enough for
// 8 ranks on 2 busy cores, short enough that a hang fails fast.
const collTimeout = 30 * time.Second

// backend is one way of running the suite.
type backend struct {
	name  string   // dispatch.WithBackend's argument
	label string   // subtest name
	nodes int      // simulated nodes (GOCOLL_NODE_ID per rank); 0: one
	nps   []int    // world sizes; nil: 1..8 (shortNPs in -short mode)
	isas  bool     // give the ranks different kernel ISA levels (GOCOLL_ISA)
	sizes []int    // conform sizes
	short []int    // conform sizes in -short mode
	rand  []int    // conform sizes of the random pass (not in -short mode)
	env   []string // extra environment
}

// The store-based kv backend moves every byte through the store server, so
// it gets smaller sizes than the real transports.
var backends = []backend{
	{name: "kv", label: "kv", sizes: []int{0, 1, 7, 300}, short: []int{0, 1, 7}},
	{name: "shm", label: "shm", sizes: []int{0, 1, 7, 1001, 65537}, short: []int{0, 1, 7, 1001}, rand: []int{0, 1, 7, 1001}},
	{name: "tcp", label: "tcp", sizes: []int{0, 1, 7, 1001, 65537}, short: []int{0, 1, 7, 1001}, rand: []int{0, 1, 7, 1001}},
	// Two simulated nodes: dispatch picks what it picks between nodes.
	{name: "auto", label: "auto-2nodes", nodes: 2, sizes: []int{0, 1, 7, 1001}, short: []int{0, 1, 7}},
	// Ranks whose kernels run at different ISA levels must still agree bit
	// for bit: each reduces a different slice in the large paths.
	{name: "shm", label: "shm-mixed-isa", isas: true, nps: []int{2, 3, 4}, sizes: []int{0, 7, 1001, 65537},
		short: []int{0, 7, 1001}, rand: []int{0, 7, 1001}},
	{name: "tcp", label: "tcp-mixed-isa", isas: true, nps: []int{3}, sizes: []int{0, 7, 1001, 65537},
		short: []int{0, 7, 1001}, rand: []int{0, 7, 1001}},
}

// isaLevels are the kernel levels this CPU runs, for mixed-ISA jobs.
func isaLevels() []string {
	var l []string
	for isa := kernel.Generic; isa <= kernel.Best(); isa++ {
		l = append(l, isa.String())
	}
	return l
}

var allNPs = []int{1, 2, 3, 4, 5, 6, 7, 8}
var shortNPs = []int{1, 2, 3, 8}

// initComm is how every rank joins: through dispatch, as a user would,
// over the store proctest runs.
func initComm(ctx context.Context, r *proctest.Rank, be string) (*dispatch.Comm, error) {
	return initCommTimeout(ctx, r, be, collTimeout)
}

func initCommTimeout(ctx context.Context, r *proctest.Rank, be string, timeout time.Duration) (*dispatch.Comm, error) {
	return dispatch.Init(ctx,
		dispatch.WithRank(r.Rank),
		dispatch.WithSize(r.Size),
		dispatch.WithStore(r.Store),
		dispatch.WithSecret(r.Secret),
		dispatch.WithBackend(be),
		dispatch.WithTimeout(timeout),
	)
}

// available reports why dispatch cannot run backend be here, or "" if it
// can: it tries a one-rank Init in this process.
func available(be string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dispatch.Init(ctx, dispatch.WithRank(0), dispatch.WithSize(1),
		dispatch.WithStore(memstore.New()), dispatch.WithSecret([]byte("probe")),
		dispatch.WithBackend(be), dispatch.WithTimeout(5*time.Second))
	if err != nil {
		return err.Error()
	}
	c.Close()
	return ""
}

func TestConformance(t *testing.T) {
	for _, be := range backends {
		t.Run(be.label, func(t *testing.T) {
			if why := available(be.name); why != "" {
				t.Skipf("dispatch offers no %q backend here: %s", be.name, why)
			}
			nps, sizes := allNPs, be.sizes
			if testing.Short() || raceEnabled {
				nps, sizes = shortNPs, be.short
			}
			if be.nps != nil {
				nps = be.nps
			}
			if be.isas && len(isaLevels()) < 2 {
				t.Skipf("this CPU runs only the %v kernels: nothing to mix", isaLevels())
			}
			for _, np := range nps {
				if be.nodes > np {
					continue
				}
				t.Run(fmt.Sprintf("np%d", np), func(t *testing.T) {
					start := time.Now()
					opts := []proctest.Option{
						proctest.Timeout(4 * time.Minute),
						proctest.Env(envBackend+"="+be.name, envSizes+"="+joinInts(sizes), envRandom+"="+joinInts(be.rand)),
						proctest.Env(be.env...),
					}
					if testing.Short() {
						opts = append(opts, proctest.Env(envFast+"=1"))
					}
					opts = append(opts, proctest.RankEnv(func(r int) []string {
						var env []string
						if be.nodes > 0 {
							// Blocks of ranks per node, as a launcher assigns them.
							env = append(env, fmt.Sprintf("GOCOLL_NODE_ID=testnode%d", r*be.nodes/np))
						}
						if be.isas {
							l := isaLevels()
							env = append(env, kernel.EnvISA+"="+l[r%len(l)])
						}
						return env
					}))
					proctest.Run(t, "conform", np, opts...)
					t.Logf("%s np=%d sizes %v: %v", be.label, np, sizes, time.Since(start).Round(time.Millisecond))
				})
			}
		})
	}
}

// TestLarge runs the float32 and bfloat16 cases (the dtypes the fast paths
// are for) of every collective and op with blocks of 1 MiB (shm's default
// buffer size) and 3.5 MiB, where backends cut messages into chunks and
// pipeline them, at a few world sizes: large blocks cost memory and time,
// and every dtype's large path is the same code as these two's.
func TestLarge(t *testing.T) {
	nps := []int{2, 5}
	if testing.Short() {
		nps = []int{3}
	}
	if raceEnabled {
		t.Skip("large blocks take minutes with the race detector; run without -race")
	}
	for _, be := range backends {
		if be.name == "kv" || be.nodes > 0 || be.isas {
			// The store-based backend is not built for size; exact inputs
			// make every ISA agree, so mixing them adds nothing here.
			continue
		}
		t.Run(be.label, func(t *testing.T) {
			if why := available(be.name); why != "" {
				t.Skipf("dispatch offers no %q backend here: %s", be.name, why)
			}
			for _, np := range nps {
				t.Run(fmt.Sprintf("np%d", np), func(t *testing.T) {
					start := time.Now()
					proctest.Run(t, "conform", np, proctest.Timeout(4*time.Minute),
						proctest.Env(envBackend+"="+be.name, envBytes+"="+joinInts(largeBytes), envDTypes+"=float32,bfloat16"))
					t.Logf("%s np=%d bytes %v: %v", be.label, np, largeBytes, time.Since(start).Round(time.Millisecond))
				})
			}
		})
	}
}

// largeBytes are TestLarge's block sizes: shm's default buffer and 3.5x it.
var largeBytes = []int{1 << 20, 7 << 19}

func conformBody(ctx context.Context, r *proctest.Rank) error {
	be := os.Getenv(envBackend)
	sizes, err := parseInts(os.Getenv(envSizes))
	if err != nil {
		return err
	}
	if want := os.Getenv(kernel.EnvISA); want != "" {
		if err := kernel.CheckEnv(); err != nil || kernel.Active().String() != want {
			return fmt.Errorf("rank %d: %s=%s not in effect (active %v): %v", r.Rank, kernel.EnvISA, want, kernel.Active(), err)
		}
	}
	c, err := initComm(ctx, r, be)
	if err != nil {
		return fmt.Errorf("rank %d: dispatch.Init with backend %q: %w", r.Rank, be, err)
	}
	defer c.Close()
	if be != "auto" && c.Backend() != be {
		return fmt.Errorf("rank %d: asked dispatch for backend %q, got %q", r.Rank, be, c.Backend())
	}
	rand, err := parseInts(os.Getenv(envRandom))
	if err != nil {
		return err
	}
	bytes, err := parseInts(os.Getenv(envBytes))
	if err != nil {
		return err
	}
	fast := os.Getenv(envFast) == "1"
	opts := conform.Options{Sizes: sizes, Bytes: bytes, RandomSizes: rand, NoRandom: fast || bytes != nil,
		NoInPlace: fast, CaseTimeout: collTimeout}
	if dts := os.Getenv(envDTypes); dts != "" {
		names := strings.Split(dts, ",")
		opts.Filter = func(c conform.Case) bool { return c.DType == 0 || slices.Contains(names, c.DType.String()) }
	}
	if err := conform.Run(ctx, c, opts); err != nil {
		return fmt.Errorf("backend %s (dispatch chose %s): %w", be, c.Backend(), err)
	}
	return nil
}

// TestMismatch checks that when rank 1 passes a different count or dtype,
// every rank gets a *core.MismatchError naming the field, not a result.
func TestMismatch(t *testing.T) {
	for _, be := range backends {
		if be.nodes > 0 || be.isas {
			continue // same transports as the plain entries
		}
		t.Run(be.label, func(t *testing.T) {
			if why := available(be.name); why != "" {
				t.Skipf("dispatch offers no %q backend here: %s", be.name, why)
			}
			for _, field := range []string{"count", "dtype"} {
				t.Run(field, func(t *testing.T) {
					proctest.Run(t, "mismatch", 3, proctest.Timeout(time.Minute),
						proctest.Env(envBackend+"="+be.name, envField+"="+field))
				})
			}
		})
	}
}

func mismatchBody(ctx context.Context, r *proctest.Rank) error {
	be, field := os.Getenv(envBackend), os.Getenv(envField)
	c, err := initComm(ctx, r, be)
	if err != nil {
		return err
	}
	defer c.Close()
	const n = 64
	req := &core.Request{Kind: coll.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpSum, Count: n}
	if r.Rank == 1 {
		switch field {
		case "count":
			req.Count = n + 1
		case "dtype":
			req.DType = coll.DTypeInt32 // same size: only the descriptor tells
		}
	}
	size := req.Count * req.DType.Size()
	req.Send, req.Recv = make([]byte, size), make([]byte, size)
	err = c.Do(ctx, req)
	var me *core.MismatchError
	switch {
	case err == nil:
		return fmt.Errorf("rank %d: allreduce with rank 1's %s different returned no error", r.Rank, field)
	case !errors.As(err, &me):
		return fmt.Errorf("rank %d: want a *core.MismatchError on %s, got %T: %w", r.Rank, field, err, err)
	case me.Field != field:
		return fmt.Errorf("rank %d: the mismatch names field %q, want %q: %w", r.Rank, me.Field, field, err)
	}
	return nil
}

// TestAbsentRank checks that when rank 2 never enters a collective, the
// others get an error naming it once the timeout passes.
func TestAbsentRank(t *testing.T) {
	for _, be := range backends {
		if be.nodes > 0 || be.isas {
			continue // same transports as the plain entries
		}
		t.Run(be.label, func(t *testing.T) {
			if why := available(be.name); why != "" {
				t.Skipf("dispatch offers no %q backend here: %s", be.name, why)
			}
			proctest.Run(t, "absent", 3, proctest.Timeout(time.Minute), proctest.Env(envBackend+"="+be.name))
		})
	}
}

func absentBody(ctx context.Context, r *proctest.Rank) error {
	be := os.Getenv(envBackend)
	c, err := initComm(ctx, r, be)
	if err != nil {
		return err
	}
	defer c.Close()
	if r.Rank == 2 {
		// Stay alive (a dead peer is a different failure) until the
		// others have seen the timeout.
		for _, k := range []string{"done/0", "done/1"} {
			if _, err := r.Store.Get(ctx, k); err != nil {
				return err
			}
		}
		return nil
	}
	defer r.Store.Set(context.Background(), "done/"+strconv.Itoa(r.Rank), nil)
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	buf := make([]byte, 16)
	err = c.Do(cctx, &core.Request{Kind: coll.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpSum, Count: 4, Send: buf, Recv: buf})
	var pe *core.PeerError
	switch {
	case err == nil:
		return fmt.Errorf("rank %d: allreduce without rank 2 returned no error", r.Rank)
	case !errors.As(err, &pe):
		return fmt.Errorf("rank %d: want a *core.PeerError naming rank 2, got %T: %w", r.Rank, err, err)
	case !slices.Contains(pe.Ranks, 2) || slices.Contains(pe.Ranks, r.Rank):
		return fmt.Errorf("rank %d: the error names ranks %v, want 2 (and not itself): %w", r.Rank, pe.Ranks, err)
	case !strings.Contains(err.Error(), "2"):
		return fmt.Errorf("rank %d: the error text does not name rank 2: %w", r.Rank, err)
	}
	return nil
}

// TestKilledRank kills rank 1 with SIGKILL while the ranks run allreduces
// back to back and checks that the others return an error naming it
// instead of hanging (proctest's timeout fails the test if they hang).
func TestKilledRank(t *testing.T) {
	for _, be := range backends {
		if be.nodes > 0 || be.isas {
			continue // same transports as the plain entries
		}
		t.Run(be.label, func(t *testing.T) {
			if why := available(be.name); why != "" {
				t.Skipf("dispatch offers no %q backend here: %s", be.name, why)
			}
			res := proctest.Run(t, "killed", 3, proctest.Timeout(time.Minute),
				proctest.Env(envBackend+"="+be.name), proctest.KillOnMark(1, "running"))
			if !res[1].Killed {
				t.Errorf("rank 1 was not killed: %+v", res[1])
			}
		})
	}
}

// killedTimeout is the dispatch timeout of TestKilledRank: a backend that
// notices a dead peer only by its silence still answers within it.
const killedTimeout = 5 * time.Second

func killedBody(ctx context.Context, r *proctest.Rank) error {
	be := os.Getenv(envBackend)
	c, err := initCommTimeout(ctx, r, be, killedTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 4096)
	for i := 0; ; i++ {
		if r.Rank == 1 && i == 20 {
			r.Mark("running") // proctest kills this process now
		}
		// The body's context carries proctest's deadline, which would
		// override the communicator's timeout: bound each call instead.
		cctx, cancel := context.WithTimeout(ctx, killedTimeout)
		err := c.Do(cctx, &core.Request{Kind: coll.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpSum,
			Count: len(buf) / 4, Send: buf, Recv: buf})
		cancel()
		if err == nil {
			continue
		}
		if r.Rank == 1 {
			return fmt.Errorf("rank 1 failed before it was killed: %w", err)
		}
		var pe *core.PeerError
		switch {
		case !errors.As(err, &pe):
			return fmt.Errorf("rank %d: allreduce #%d: want a *core.PeerError naming rank 1, got %T: %w", r.Rank, i, err, err)
		case !slices.Contains(pe.Ranks, 1):
			return fmt.Errorf("rank %d: the error names ranks %v, want 1: %w", r.Rank, pe.Ranks, err)
		}
		return nil
	}
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parsing %q: %w", s, err)
		}
		out = append(out, n)
	}
	return out, nil
}
