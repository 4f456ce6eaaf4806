// Package launchers runs gocoll under real launchers that gocoll did not
// write, with nothing exported: MPICH's mpiexec (hydra) and Slurm's srun,
// whose PMI connection carries the store's address and the secret
// (dispatch/pmi.go). The tests skip, saying which package to install,
// where a launcher is absent.
package launchers

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/pmi"
)

// envChild names the body a child of this test binary runs, as one rank
// that a launcher started.
const envChild = "LAUNCHERS_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(envChild) {
	case "":
		code := m.Run()
		if helloPath != "" {
			os.RemoveAll(filepath.Dir(helloPath))
		}
		os.Exit(code)
	case "allreduce":
		os.Exit(report(allreduceChild()))
	case "pmi1":
		os.Exit(report(pmiChild(1)))
	case "pmi2":
		os.Exit(report(pmiChild(2)))
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", envChild, os.Getenv(envChild))
		os.Exit(2)
	}
}

func report(err error) int {
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

// allreduceChild times Init and checks an allreduce of 1<<15 float64s
// whose every sum is exact.
func allreduceChild() error {
	ctx := context.Background()
	start := time.Now()
	c, err := dispatch.Init(ctx)
	if err != nil {
		return err
	}
	initTime := time.Since(start)
	defer c.Close()
	const n = 1 << 15
	send, recv := make([]float64, n), make([]float64, n)
	for i := range send {
		send[i] = float64(c.Rank()*n + i)
	}
	if err := coll.AllreduceFloat64(ctx, c, send, recv, coll.OpSum); err != nil {
		return fmt.Errorf("rank %d: allreduce: %w", c.Rank(), err)
	}
	p := c.Size()
	for i, v := range recv {
		if want := float64(n*p*(p-1)/2 + p*i); v != want {
			return fmt.Errorf("rank %d: allreduce element %d = %v; want %v", c.Rank(), i, v, want)
		}
	}
	fmt.Printf("rank %d of %d: init %d us; allreduce of %d float64s checked (%s)\n",
		c.Rank(), c.Size(), initTime.Microseconds(), n, c.Backend())
	return nil
}

// pmiChild drives the launcher's PMI directly: every rank puts a key,
// fences, and reads everyone's.
func pmiChild(version int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	c, err := pmi.Connect(ctx, os.LookupEnv, version)
	if err != nil {
		return err
	}
	if err := c.Put(ctx, "k"+strconv.Itoa(c.Rank()), "v:"+strconv.Itoa(c.Rank())); err != nil {
		return err
	}
	if err := c.Fence(ctx); err != nil {
		return err
	}
	for r := 0; r < c.Size(); r++ {
		v, ok, err := c.Get(ctx, "k"+strconv.Itoa(r))
		if err != nil {
			return err
		}
		if want := "v:" + strconv.Itoa(r); !ok || v != want {
			return fmt.Errorf("rank %d: Get(k%d) = %q, %v; want %q", c.Rank(), r, v, ok, want)
		}
	}
	if _, ok, err := c.Get(ctx, "absent"); err != nil || ok {
		return fmt.Errorf("rank %d: Get(absent) = %v, %v; want not found", c.Rank(), ok, err)
	}
	if err := c.Finalize(ctx); err != nil {
		return err
	}
	fmt.Printf("pmi-%d rank %d of %d ok (kvs %s, %d us from connect to finalize)\n", version, c.Rank(), c.Size(), c.KVSName(),
		time.Since(start).Microseconds())
	return nil
}

// cleanEnv is this process's environment without anything that tells
// gocoll where it runs: the tests check that the launcher alone does.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "GOCOLL_"), strings.HasPrefix(k, "MASTER_"), strings.HasPrefix(k, "PMI_"),
			strings.HasPrefix(k, "SLURM_"), strings.HasPrefix(k, "OMPI_"), strings.HasPrefix(k, "MPI_"),
			strings.HasPrefix(k, "TORCHELASTIC_"), k == envChild,
			slices.Contains([]string{"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"}, k):
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

var (
	helloOnce sync.Once
	helloPath string
	helloErr  error
)

// hello builds examples/hello once per test binary.
func hello(t *testing.T) string {
	t.Helper()
	helloOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gocoll-launchers-")
		if err != nil {
			helloErr = err
			return
		}
		helloPath = filepath.Join(dir, "hello") // TestMain removes dir
		if out, err := exec.Command("go", "build", "-o", helloPath, "../../examples/hello").CombinedOutput(); err != nil {
			helloErr = fmt.Errorf("go build examples/hello: %v\n%s", err, out)
		}
	})
	if helloErr != nil {
		t.Fatal(helloErr)
	}
	return helloPath
}

// run runs a launcher's command line with env and returns its output.
func run(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return string(out), err
}

// checkHello checks every rank greeted and got the right sum.
func checkHello(t *testing.T, out string, np int) {
	t.Helper()
	for r := 0; r < np; r++ {
		hello := fmt.Sprintf("hello from rank %d of %d (", r, np)
		done := fmt.Sprintf("rank %d passed 10 barriers; sum of ranks = %d", r, np*(np-1)/2)
		if !strings.Contains(out, hello) || !strings.Contains(out, done) {
			t.Errorf("rank %d's lines are missing from the output:\n%s", r, out)
		}
	}
}

// checkAllreduce checks every rank checked its allreduce, and returns
// the ranks' Init times.
func checkAllreduce(t *testing.T, out string, np int) []time.Duration {
	t.Helper()
	var times []time.Duration
	for r := 0; r < np; r++ {
		prefix := fmt.Sprintf("rank %d of %d: init ", r, np)
		i := strings.Index(out, prefix)
		if i < 0 {
			t.Errorf("rank %d's line is missing from the output:\n%s", r, out)
			continue
		}
		var us int64
		if _, err := fmt.Sscanf(out[i+len(prefix):], "%d us", &us); err != nil {
			t.Errorf("rank %d's line: %v\n%s", r, err, out)
			continue
		}
		times = append(times, time.Duration(us)*time.Microsecond)
	}
	return times
}

func checkPMI(t *testing.T, out string, version, np int) {
	t.Helper()
	for r := 0; r < np; r++ {
		if !strings.Contains(out, fmt.Sprintf("pmi-%d rank %d of %d ok", version, r, np)) {
			t.Errorf("rank %d's line is missing from the output:\n%s", r, out)
		}
	}
}

// initBar is the most an Init under a launcher should take at np 8. The
// tests report the time against it; they fail only at initLimit, far
// above it, which only a wait on a timeout or a retry loop reaches: on a
// loaded machine (load average 20 on 2 CPUs) the ranks of one launch
// start up to seconds apart, and every rank's Init waits for the last.
const (
	initBar   = time.Second
	initLimit = 15 * time.Second
)

// reportInit logs the slowest and the median rank's Init time.
func reportInit(t *testing.T, launcher string, times []time.Duration) {
	t.Helper()
	if len(times) == 0 {
		return
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	slowest, median := times[len(times)-1], times[len(times)/2]
	t.Logf("%s, np %d: Init took %v at most, %v median (bar %v)", launcher, len(times), slowest.Round(time.Millisecond),
		median.Round(time.Millisecond), initBar)
	if slowest > initLimit {
		t.Errorf("%s: Init took %v; the bar is %v, and no load explains %v", launcher, slowest, initBar, initLimit)
	}
}
