package shm

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/internal/memstore"
	"github.com/gocoll/gocoll/internal/proctest"
)

func TestMain(m *testing.M) {
	registerBodies()
	proctest.Main(m)
}

var jobSeq int

// goRanks runs body as n goroutine ranks of one in-process group (each with
// its own mapping of a real memfd workspace, behind a core.Guard as every
// user's calls are) and returns their errors.
func goRanks(t testing.TB, n int, opts []Option, body func(ctx context.Context, g *core.Guard) error) []error {
	return goRanksTimeout(t, n, 30*time.Second, opts, body)
}

// goRanksTimeout is goRanks with the group's timeout.
func goRanksTimeout(t testing.TB, n int, timeout time.Duration, opts []Option, body func(ctx context.Context, g *core.Guard) error) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st := memstore.New()
	jobSeq++
	job := fmt.Sprintf("gotest-%d-%d", os.Getpid(), jobSeq)
	// A spinning rank keeps its P (its yields are raw system calls the Go
	// scheduler does not see), so ranks that outnumber the Ps would wait
	// out whole spins for a P instead of for their peers: give each rank
	// one, as each process of a real job has its own.
	if runtime.GOMAXPROCS(0) < n+1 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(n + 1))
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := 0; r < n; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := core.Group{Rank: r, Size: n, Store: core.WithPrefix(st, "shm/"), JobID: job, Timeout: timeout}
			b, err := New(ctx, g, opts...)
			if err != nil {
				errs[r] = fmt.Errorf("rank %d: New: %w", r, err)
				return
			}
			guard := core.NewGuard(b)
			defer guard.Close()
			if err := body(ctx, guard); err != nil {
				errs[r] = fmt.Errorf("rank %d: %w", r, err)
			}
		}()
	}
	wg.Wait()
	return errs
}

func mustOK(t testing.TB, errs []error) {
	t.Helper()
	for _, e := range errs {
		if e != nil {
			t.Error(e)
		}
	}
}

// procRanks runs the registered body name as np real processes.
func procRanks(t testing.TB, name string, np int, opts ...proctest.Option) []proctest.Result {
	t.Helper()
	return proctest.Run(t, name, np, append([]proctest.Option{proctest.Timeout(2 * time.Minute)}, opts...)...)
}

// backend is the shm backend behind g.
func backend(g *core.Guard) *Backend { return g.Backend().(*Backend) }

// newProcComm builds the backend of a process rank, behind a core.Guard.
func newProcComm(ctx context.Context, r *proctest.Rank, prefix string, opts ...Option) (*core.Guard, error) {
	b, err := newProcBackend(ctx, r, prefix, opts...)
	if err != nil {
		return nil, err
	}
	return core.NewGuard(b), nil
}

// newProcBackend builds the backend of a process rank.
func newProcBackend(ctx context.Context, r *proctest.Rank, prefix string, opts ...Option) (*Backend, error) {
	timeout := 30 * time.Second
	for _, kv := range r.Env {
		if v, ok := strings.CutPrefix(kv, "SHMTEST_TIMEOUT="); ok {
			if d, err := time.ParseDuration(v); err == nil {
				timeout = d
			}
		}
	}
	g := core.Group{Rank: r.Rank, Size: r.Size, Store: core.WithPrefix(r.Store, prefix), JobID: r.JobID, Secret: r.Secret, Timeout: timeout}
	return New(ctx, g, opts...)
}
