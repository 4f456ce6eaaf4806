package tcp

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
)

func init() {
	proctest.Register("bench", benchBody)
}

// Sizes the bars are set at: latency for 8 B..8 KiB, bus bandwidth
// for 2..64 MiB (float32 allreduce).
var (
	latencySizes   = []int{8, 64, 512, 1 << 10, 8 << 10}
	bandwidthSizes = []int{2 << 20, 8 << 20, 32 << 20, 64 << 20}
)

// busBW is nccl-tests' allreduce bus bandwidth: algorithm bandwidth times
// 2(n-1)/n, the fraction of the data each rank must send and receive.
func busBW(bytes int, d time.Duration, n int) float64 {
	return float64(bytes) / d.Seconds() * 2 * float64(n-1) / float64(n)
}

// measure times iters float32 allreduces of size bytes after warm-up, and
// returns the slowest rank's mean: every rank takes the maximum through a
// float64 allreduce, so that all ranks report the same figure.
func measure(ctx context.Context, c core.Comm, size, iters int) (time.Duration, error) {
	buf := make([]float32, size/4)
	out := make([]float32, size/4)
	for range min(iters/4+1, 5) {
		if err := coll.AllreduceFloat32(ctx, c, buf, out, coll.OpSum); err != nil {
			return 0, err
		}
	}
	if err := coll.Barrier(ctx, c); err != nil {
		return 0, err
	}
	cpu0 := cpuTime()
	start := time.Now()
	for range iters {
		if err := coll.AllreduceFloat32(ctx, c, buf, out, coll.OpSum); err != nil {
			return 0, err
		}
	}
	mean := []float64{time.Since(start).Seconds() / float64(iters)}
	cpu := []float64{float64(cpuTime()-cpu0) / float64(iters)}
	if err := coll.AllreduceFloat64(ctx, c, cpu, cpu, coll.OpSum); err != nil {
		return 0, err
	}
	lastCPU = time.Duration(cpu[0])
	if err := coll.AllreduceFloat64(ctx, c, mean, mean, coll.OpMax); err != nil {
		return 0, err
	}
	return time.Duration(mean[0] * 1e9), nil
}

// lastCPU is the CPU time (user and system) all ranks together spent per
// call in the last measure: a figure that a loaded machine disturbs less
// than the wall time.
var lastCPU time.Duration

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func itersFor(size int) int {
	switch {
	case size <= 8<<10:
		return 2000
	case size <= 8<<20:
		return 20
	}
	return 5
}

// benchBody prints one "RESULT" line per size on rank 0.
func benchBody(ctx context.Context, r *proctest.Rank) error {
	var opts []Option
	if s := os.Getenv("GOCOLL_TCP_BENCH_CHUNK"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return err
		}
		opts = append(opts, WithChunkSize(n))
	}
	if s := os.Getenv("GOCOLL_TCP_BENCH_SOCKBUF"); s != "" { // "send,recv" bytes
		var snd, rcv int
		if _, err := fmt.Sscanf(s, "%d,%d", &snd, &rcv); err != nil {
			return fmt.Errorf("GOCOLL_TCP_BENCH_SOCKBUF=%q: want send,recv bytes: %w", s, err)
		}
		opts = append(opts, WithSocketBuffers(snd, rcv))
	}
	b, err := procGroup(ctx, r, time.Minute, opts...)
	if err != nil {
		return err
	}
	defer b.Close()
	sizes := append(append([]int{}, latencySizes...), bandwidthSizes...)
	if s := os.Getenv("GOCOLL_TCP_BENCH_SIZES"); s != "" {
		sizes = sizes[:0]
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				return err
			}
			sizes = append(sizes, n)
		}
	}
	if dir := os.Getenv("GOCOLL_TCP_BENCH_PROFILE"); dir != "" && r.Rank == 0 {
		f, err := os.Create(fmt.Sprintf("%s/cpu-np%d.pprof", dir, r.Size))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	for _, size := range sizes {
		d, err := measure(ctx, core.NewGuard(b), size, itersFor(size))
		if err != nil {
			return fmt.Errorf("size %d: %w", size, err)
		}
		if r.Rank == 0 {
			fmt.Printf("RESULT np=%d bytes=%d algo=%v time_us=%.1f busbw_GBps=%.3f cpu_us_all_ranks=%.1f\n",
				r.Size, size, b.choose(core.KindAllreduce, size/4, size),
				d.Seconds()*1e6, busBW(size, d, r.Size)/1e9, lastCPU.Seconds()*1e6)
		}
	}
	return nil
}

// TestBenchmarkProcesses measures allreduce latency and bus bandwidth with
// every rank a process, at np = 2 and 4, and logs a table. It is a
// benchmark (no assertion on speed); run it with
//
//	GOCOLL_TCP_BENCH=1 go test ./backends/tcp -run TestBenchmarkProcesses -v
func TestBenchmarkProcesses(t *testing.T) {
	if os.Getenv("GOCOLL_TCP_BENCH") == "" {
		t.Skip("set GOCOLL_TCP_BENCH=1 to run the loopback benchmark (about a minute)")
	}
	for _, np := range []int{2, 4} {
		res := proctest.Run(t, "bench", np, proctest.Timeout(5*time.Minute))
		for _, line := range strings.Split(res[0].Output, "\n") {
			if i := strings.Index(line, "RESULT "); i >= 0 {
				t.Log(line[i+len("RESULT "):])
			}
		}
	}
}

// BenchmarkAllreduce runs ranks as goroutines of this process (all sharing
// GOMAXPROCS), for quick comparisons between changes; the figures that
// count come from TestBenchmarkProcesses and cmd/gocollbench.
func BenchmarkAllreduce(b *testing.B) {
	for _, np := range []int{2, 4} {
		for _, size := range []int{8, 8 << 10, 2 << 20, 64 << 20} {
			b.Run(fmt.Sprintf("np=%d/bytes=%d", np, size), func(b *testing.B) {
				bs := group(b, np)
				bufs := make([][]float32, np)
				for r := range bufs {
					bufs[r] = make([]float32, size/4)
				}
				b.SetBytes(int64(size))
				b.ResetTimer()
				errs := each(bs, func(be rank) error {
					for range b.N {
						if err := coll.AllreduceFloat32(context.Background(), be.c, bufs[be.Rank()], bufs[be.Rank()], coll.OpSum); err != nil {
							return err
						}
					}
					return nil
				})
				b.StopTimer()
				noErrors(b, errs)
				b.ReportMetric(busBW(size, b.Elapsed()/time.Duration(b.N), np)/1e9, "busbw_GB/s")
			})
		}
	}
}
