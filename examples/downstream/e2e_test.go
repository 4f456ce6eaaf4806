package downstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
	"unsafe"

	"example.com/downstream/internal/mycoll"
	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/kernel"
	"github.com/gocoll/gocoll/tests/conform"
)

// envRank marks a process this test binary started as one rank of a job.
const envRank = "DOWNSTREAM_E2E_RANK"

// envWantBackend is the backend a rank must find dispatch chose.
const envWantBackend = "DOWNSTREAM_E2E_BACKEND"

func TestMain(m *testing.M) {
	if os.Getenv(envRank) != "" {
		os.Exit(rankMain())
	}
	os.Exit(m.Run())
}

// jobs are the backends the end-to-end test runs complex64 over, each at
// the rank counts it applies to, with the node every rank claims
// (GOCOLL_NODE_ID): one node for shm; one per rank for tcp; two ranks a
// node for the hierarchical backend (shm inside a node, tcp between),
// which dispatch picks (auto) only for two nodes or more with several
// ranks on one of them: 3 ranks or more.
var jobs = []struct {
	name    string
	backend string // GOCOLL_BACKEND
	want    string // what Comm.Backend must report
	nps     []int
	node    func(rank int) string
}{
	{"shm", "shm", "shm", []int{1, 2, 3, 4, 5}, func(int) string { return "one" }},
	{"tcp", "tcp", "tcp", []int{1, 2, 3, 4, 5}, func(r int) string { return "node" + strconv.Itoa(r) }},
	{"hier", "auto", "shm+tcp", []int{3, 4, 5}, func(r int) string { return "node" + strconv.Itoa(r/2) }},
}

// TestComplex64EndToEnd runs jobs of real processes that allreduce and
// reduce-scatter complex64, the dtype this module's spec adds, through
// gocoll's runtime on each backend at 1 to 5 ranks. Every rank checks its
// results bit for bit against the pure-Go reference kernel: through the
// typed API, and through gocoll's conformance runner (tests/conform) for
// all of this spec's dtypes.
func TestComplex64EndToEnd(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, job := range jobs {
		for _, np := range job.nps {
			if testing.Short() && np != 3 {
				continue
			}
			t.Run(fmt.Sprintf("%s/np=%d", job.name, np), func(t *testing.T) {
				port := freePort(t)
				env := func(r int) []string {
					return []string{
						envRank + "=1", envWantBackend + "=" + job.want,
						"RANK=" + strconv.Itoa(r), "WORLD_SIZE=" + strconv.Itoa(np),
						"MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + strconv.Itoa(port),
						"GOCOLL_SECRET=downstream-e2e-" + strconv.Itoa(port),
						"GOCOLL_BACKEND=" + job.backend, "GOCOLL_NODE_ID=" + job.node(r),
						"GOCOLL_TIMEOUT=60s",
					}
				}
				runJob(t, self, np, env)
			})
		}
	}
}

// runJob starts np copies of the test binary as ranks and waits for all of
// them; a rank that fails fails the test with its output.
func runJob(t *testing.T, self string, np int, env func(rank int) []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	outs := make([]bytes.Buffer, np)
	errs := make([]error, np)
	var wg sync.WaitGroup
	for r := range np {
		cmd := exec.CommandContext(ctx, self, "-test.run=^$")
		cmd.Env = append(os.Environ(), env(r)...)
		cmd.Stdout, cmd.Stderr = &outs[r], &outs[r]
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting rank %d: %v", r, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = cmd.Wait()
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v\n%s", r, err, outs[r].String())
		}
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// rankMain is one rank of a job TestComplex64EndToEnd started.
func rankMain() int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := runRankE2E(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "rank %s: %v\n", os.Getenv("RANK"), err)
		return 1
	}
	return 0
}

func runRankE2E(ctx context.Context) error {
	c, err := dispatch.Init(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if want := os.Getenv(envWantBackend); c.Backend() != want {
		return fmt.Errorf("dispatch chose backend %q, want %q", c.Backend(), want)
	}
	for _, count := range []int{1, 257, 5000} {
		if err := typedComplex64(ctx, c, count); err != nil {
			return fmt.Errorf("count %d: %w", count, err)
		}
	}
	// The conformance runner draws values from each dtype's class and
	// float layout: complex64 needs no code of its own there.
	mine := []core.DType{mycoll.DTypeFloat32, mycoll.DTypeBFloat16, mycoll.DTypeComplex64}
	err = conform.Run(ctx, c, conform.Options{
		Sizes:       []int{0, 1, 7, 1001},
		RandomSizes: []int{1, 33},
		Filter: func(cs conform.Case) bool {
			return (cs.Kind == core.KindAllreduce || cs.Kind == core.KindReduceScatter) && slices.Contains(mine, cs.DType)
		},
	})
	if err != nil {
		return fmt.Errorf("conformance: %w", err)
	}
	return c.Barrier(ctx)
}

// e2eValue is rank r's element i: parts that are small multiples of 1/8,
// so that every sum of up to 5 of them is exact in float32, whatever order
// a backend adds in, and the results have one right answer bit for bit.
func e2eValue(r, i int) complex64 {
	return complex(float32((r*7+i*3)%17-8)/8, float32((r*5+i)%13-6)/4)
}

// typedComplex64 runs AllreduceComplex64 and ReduceScatterComplex64 with
// count elements per block and compares each rank's result with the
// pure-Go kernel's reduction of every rank's input, in rank order.
func typedComplex64(ctx context.Context, c *dispatch.Comm, count int) error {
	n, me := c.Size(), c.Rank()
	k := core.LookupType(mycoll.DTypeComplex64).Kernel(mycoll.OpSum)
	if k == nil {
		return errors.New("complex64 sum is not registered")
	}
	inputs := make([][]complex64, n)
	srcs := make([][]byte, n)
	for r := range inputs {
		inputs[r] = make([]complex64, count*n)
		for i := range inputs[r] {
			inputs[r][i] = e2eValue(r, i)
		}
		srcs[r] = complexBytes(inputs[r])
	}
	want := make([]complex64, count*n)
	k.ReduceAt(kernel.Generic, nil, complexBytes(want), srcs)

	// Allreduce of the first count elements, out of place and in place.
	recv := make([]complex64, count)
	if err := mycoll.AllreduceComplex64(ctx, c, inputs[me][:count], recv, mycoll.OpSum); err != nil {
		return fmt.Errorf("allreduce: %w", err)
	}
	if err := sameBits("allreduce", recv, want[:count]); err != nil {
		return err
	}
	buf := slices.Clone(inputs[me][:count])
	if err := mycoll.AllreduceComplex64(ctx, c, buf, buf, mycoll.OpSum); err != nil {
		return fmt.Errorf("allreduce in place: %w", err)
	}
	if err := sameBits("allreduce in place", buf, want[:count]); err != nil {
		return err
	}
	// Reduce-scatter of all count*n: this rank gets block me of the sum.
	if err := mycoll.ReduceScatterComplex64(ctx, c, inputs[me], recv, mycoll.OpSum); err != nil {
		return fmt.Errorf("reduce_scatter: %w", err)
	}
	return sameBits("reduce_scatter", recv, want[me*count:(me+1)*count])
}

func complexBytes(s []complex64) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), 8*len(s))
}

// sameBits compares got and want bit for bit.
func sameBits(what string, got, want []complex64) error {
	if bytes.Equal(complexBytes(got), complexBytes(want)) {
		return nil
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Errorf("%s: element %d is %v, want %v", what, i, got[i], want[i])
		}
	}
	return fmt.Errorf("%s: results differ in their bits", what)
}

// TestSharedHalfTypes: a spec's 16-bit floats are gocoll's, the same Go
// types in every typed package.
func TestSharedHalfTypes(t *testing.T) {
	var mine mycoll.BFloat16 = mycoll.BFloat16FromFloat32(1.5)
	var theirs coll.BFloat16 = mine // compiles only if the types are identical
	if theirs != coll.BFloat16FromFloat32(1.5) {
		t.Fatalf("mycoll.BFloat16FromFloat32(1.5) = %v, coll's is %v", mine, coll.BFloat16FromFloat32(1.5))
	}
}
