package shm

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
)

// Benchmarks run the ranks as real processes (proctest): rank 0 times the
// loop itself and prints the result, which the parent reports as custom
// metrics: "us/coll" (median over 5 timed repetitions of the loop) and
// "busGB/s" (nccl-tests' bus bandwidth for allreduce, bytes*2(n-1)/n per
// second). The framework's own ns/op includes process start-up; ignore it.

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func benchBody(ctx context.Context, r *proctest.Rank) error {
	bytes := envInt("SHMB_BYTES", 8)
	iters := envInt("SHMB_ITERS", 100)
	zc := envInt("SHMB_ZC", 0) == 1
	dt := core.DType(envInt("SHMB_DTYPE", int(coll.DTypeFloat32)))
	var opts []Option
	if v := envInt("SHMB_SMALL", -1); v >= 0 {
		opts = append(opts, WithSmallThreshold(v))
	}
	if v := envInt("SHMB_SPIN_US", -1); v >= 0 {
		opts = append(opts, WithSpin(time.Duration(v)*time.Microsecond))
	}
	if v := envInt("SHMB_BUF", 0); v > 0 {
		opts = append(opts, WithBufferSize(v))
	}
	if zc {
		opts = append(opts, WithHeapSize(bytes))
	}
	b, err := newProcBackend(ctx, r, "shm/", opts...)
	if err != nil {
		return err
	}
	g := core.NewGuard(b)
	defer g.Close()
	es := dt.Size()
	count := bytes / es
	var send []byte
	if zc {
		if send, err = b.Alloc(count * es); err != nil {
			return err
		}
	} else {
		send = make([]byte, count*es)
	}
	for i := range send {
		send[i] = byte(i % 7) // small values: no NaN or Inf for either dtype
	}
	recv := make([]byte, count*es)
	req := &core.Request{Kind: core.KindAllreduce, DType: dt, Op: coll.OpSum, Count: count, Send: send, Recv: recv}
	run := func(k int) error {
		for i := 0; i < k; i++ {
			if err := g.Do(ctx, req); err != nil {
				return err
			}
		}
		return nil
	}
	if err := run(max(2, iters/10)); err != nil { // warm up
		return err
	}
	if dir := os.Getenv("SHMB_PROFILE"); dir != "" && r.Rank == 0 {
		// A CPU profile of rank 0's timed loops, for the per-call costs.
		f, err := os.Create(fmt.Sprintf("%s/shm-np%d-%dB.pprof", dir, r.Size, bytes))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var per []float64
	for rep := 0; rep < 5; rep++ {
		if err := g.Do(ctx, &core.Request{Kind: core.KindBarrier}); err != nil {
			return err
		}
		t0 := time.Now()
		if err := run(iters); err != nil {
			return err
		}
		per = append(per, float64(time.Since(t0).Nanoseconds())/float64(iters))
	}
	sort.Float64s(per)
	if r.Rank == 0 {
		fmt.Printf("SHMBENCH ns=%.1f\n", per[len(per)/2])
	}
	return nil
}

func benchAllreduce(b *testing.B, np, dtype, bytes int, zc bool, env ...string) {
	iters := max(b.N, 1)
	// Keep each timed repetition near a tenth of a second at most.
	if lim := int(100e6 / (float64(bytes)/1e3 + 1000)); iters > lim && bytes > 4096 {
		iters = max(lim, 3)
	}
	z := 0
	if zc {
		z = 1
	}
	opts := []proctest.Option{proctest.Timeout(5 * time.Minute)}
	if os.Getenv("SHMB_PIN") != "" {
		// Pin rank r to CPU r mod NumCPU (taskset), or every rank to CPU 0
		// (SHMB_PIN=same), to see placement's share.
		opts = append(opts, proctest.Wrapper(func(rank int) []string {
			cpu := rank % runtime.NumCPU()
			if os.Getenv("SHMB_PIN") == "same" {
				cpu = 0 // all ranks share one CPU: the worst placement
			}
			return []string{"taskset", "-c", strconv.Itoa(cpu)}
		}))
	}
	res := proctest.Run(b, "bench", np, append(opts, proctest.Env(
		"SHMB_BYTES="+strconv.Itoa(bytes), "SHMB_ITERS="+strconv.Itoa(iters),
		"SHMB_ZC="+strconv.Itoa(z), "SHMB_DTYPE="+strconv.Itoa(dtype)), proctest.Env(env...))...)
	for _, r := range res {
		if r.Rank != 0 {
			continue
		}
		i := strings.Index(r.Output, "SHMBENCH ns=")
		if i < 0 {
			b.Fatalf("no result in rank 0's output:\n%s", r.Output)
		}
		var ns float64
		fmt.Sscanf(r.Output[i+len("SHMBENCH ns="):], "%f", &ns)
		b.ReportMetric(ns/1e3, "us/coll")
		bus := float64(bytes) * 2 * float64(np-1) / float64(np) / ns // bytes per ns = GB/s
		b.ReportMetric(bus, "busGB/s")
	}
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20:
		return strconv.Itoa(n>>20) + "MiB"
	case n >= 1<<10:
		return strconv.Itoa(n>>10) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}

// BenchmarkAllreduce: np=2 float32 and bfloat16 from 8 B to 64 MiB, with
// heap (zero-copy) inputs beside copied ones for the large sizes.
func BenchmarkAllreduce(b *testing.B) {
	sizes := []int{8, 64, 512, 4 << 10, 8 << 10, 64 << 10, 512 << 10, 2 << 20, 16 << 20, 64 << 20}
	for _, dt := range []core.DType{coll.DTypeFloat32, coll.DTypeBFloat16} {
		for _, sz := range sizes {
			b.Run(fmt.Sprintf("np2/%v/%s", dt, sizeName(sz)), func(b *testing.B) { benchAllreduce(b, 2, int(dt), sz, false) })
			if sz >= 512<<10 {
				b.Run(fmt.Sprintf("np2/%v/%s/zerocopy", dt, sizeName(sz)), func(b *testing.B) { benchAllreduce(b, 2, int(dt), sz, true) })
			}
		}
	}
	for _, sz := range []int{8, 8 << 10, 512 << 10, 2 << 20, 64 << 20} {
		b.Run(fmt.Sprintf("np4/float32/%s", sizeName(sz)), func(b *testing.B) { benchAllreduce(b, 4, int(coll.DTypeFloat32), sz, false) })
	}
}

// BenchmarkTune measures the choices behind the defaults: direct against
// split allreduce at np=3 and 4 (WithSmallThreshold), and the chunk size
// (WithBufferSize) for large messages at np=2 and 4.
func BenchmarkTune(b *testing.B) {
	for _, np := range []int{3, 4} {
		for _, sz := range []int{4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20} {
			for _, alg := range []struct {
				name  string
				small int
			}{{"direct", 1 << 40}, {"split", 0}} {
				b.Run(fmt.Sprintf("np%d/%s/%s", np, sizeName(sz), alg.name), func(b *testing.B) {
					benchAllreduce(b, np, int(coll.DTypeFloat32), sz, false, "SHMB_SMALL="+strconv.Itoa(alg.small))
				})
			}
		}
	}
	for _, np := range []int{2, 4} {
		for _, buf := range []int{128 << 10, 256 << 10, 1 << 20, 4 << 20} {
			b.Run(fmt.Sprintf("np%d/64MiB/buffer%s", np, sizeName(buf)), func(b *testing.B) {
				benchAllreduce(b, np, int(coll.DTypeFloat32), 64<<20, false, "SHMB_BUF="+strconv.Itoa(buf))
			})
		}
	}
}

// BenchmarkZeroCopyAlgorithms compares direct and split allreduce on
// zero-copy and copied inputs at np=2.
func BenchmarkZeroCopyAlgorithms(b *testing.B) {
	for _, sz := range []int{2 << 20, 16 << 20, 64 << 20} {
		for _, alg := range []struct {
			name  string
			small int
		}{{"direct", 1 << 40}, {"split", 0}} {
			for _, zc := range []bool{false, true} {
				b.Run(fmt.Sprintf("%s/%s/zc=%v", sizeName(sz), alg.name, zc), func(b *testing.B) {
					benchAllreduce(b, 2, int(coll.DTypeFloat32), sz, zc, "SHMB_SMALL="+strconv.Itoa(alg.small))
				})
			}
		}
	}
}

// BenchmarkChunk compares chunk (buffer) sizes at np=2 for mid and large
// messages.
func BenchmarkChunk(b *testing.B) {
	for _, sz := range []int{512 << 10, 2 << 20, 64 << 20} {
		for _, buf := range []int{128 << 10, 256 << 10, 512 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("%s/buffer%s", sizeName(sz), sizeName(buf)), func(b *testing.B) {
				benchAllreduce(b, 2, int(coll.DTypeFloat32), sz, false, "SHMB_BUF="+strconv.Itoa(buf))
			})
		}
	}
}
