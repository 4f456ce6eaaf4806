// Command spinrtt measures the cross-core spin round trip: two threads,
// each locked to its own CPU, bounce a counter through one cache line
// (each waits on plain atomic loads for the other's store). It is the
// floor of any shared-memory exchange between two ranks, and the figure
// the shm backend's small-message latency is judged against: run it in
// the same session as the benchmark it calibrates.
//
//	go run ./bench/spinrtt [-cpus 0,1] [-n 2000] [-reps 301]
//
// It prints the median over -reps batches of -n round trips, in ns per
// round trip, and with -json one bench/perf-style object.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// line is one 64-byte cache line holding the counter both threads bounce,
// padded so that nothing else shares it.
type line struct {
	_ [64]byte
	v atomic.Uint64
	_ [56]byte
}

func main() {
	cpus := flag.String("cpus", "", "two CPUs to pin the threads to, e.g. 0,1 (default: the first two this process may use)")
	n := flag.Int("n", 2000, "round trips per batch (short batches: on a loaded machine most run without being preempted)")
	reps := flag.Int("reps", 301, "batches; the median is reported")
	asJSON := flag.Bool("json", false, "print a JSON object instead of a line")
	flag.Parse()
	a, b, err := pickCPUs(*cpus)
	if err != nil {
		fmt.Fprintln(os.Stderr, "spinrtt:", err)
		os.Exit(2)
	}
	per := make([]float64, 0, *reps)
	for range *reps {
		per = append(per, float64(roundTrips(a, b, *n))/float64(*n))
	}
	slices.Sort(per)
	med := per[len(per)/2]
	if *asJSON {
		out := map[string]any{"tool": "spinrtt", "cpus": []int{a, b}, "round_trips": *n, "reps": *reps,
			"median_ns": med, "min_ns": per[0], "max_ns": per[len(per)-1]}
		if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
			fmt.Fprintln(os.Stderr, "spinrtt:", err)
			os.Exit(1)
		}
		return
	}
	fmt.Printf("spin round trip CPU %d <-> CPU %d: median %.1f ns (min %.1f, max %.1f) over %d batches of %d\n",
		a, b, med, per[0], per[len(per)-1], *reps, *n)
}

// pickCPUs parses "a,b", or takes the first two CPUs of the affinity mask.
func pickCPUs(s string) (int, int, error) {
	if s != "" {
		f := strings.Split(s, ",")
		if len(f) != 2 {
			return 0, 0, fmt.Errorf("-cpus %q: want two CPUs, e.g. 0,1", s)
		}
		a, err1 := strconv.Atoi(f[0])
		b, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil || a == b || a < 0 || b < 0 {
			return 0, 0, fmt.Errorf("-cpus %q: want two different CPU numbers", s)
		}
		return a, b, nil
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return 0, 0, fmt.Errorf("reading the affinity mask: %w", err)
	}
	var got []int
	for c := 0; c < 1024 && len(got) < 2; c++ {
		if set.IsSet(c) {
			got = append(got, c)
		}
	}
	if len(got) < 2 {
		return 0, 0, fmt.Errorf("this process may use %d CPU(s); a cross-core round trip needs two", len(got))
	}
	return got[0], got[1], nil
}

// roundTrips pins two threads to CPUs a and b and times n round trips: the
// first thread stores odd values and waits for the even reply.
func roundTrips(a, b, n int) time.Duration {
	var l line
	var ready sync.WaitGroup
	ready.Add(2)
	start := make(chan struct{})
	var took time.Duration
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // pong
		defer wg.Done()
		pin(b)
		ready.Done()
		<-start
		for i := uint64(1); i <= uint64(n); i++ {
			for l.v.Load() != 2*i-1 {
			}
			l.v.Store(2 * i)
		}
	}()
	go func() { // ping
		defer wg.Done()
		pin(a)
		ready.Done()
		<-start
		t0 := time.Now()
		for i := uint64(1); i <= uint64(n); i++ {
			l.v.Store(2*i - 1)
			for l.v.Load() != 2*i {
			}
		}
		took = time.Since(t0)
	}()
	ready.Wait()
	close(start)
	wg.Wait()
	return took
}

// pin locks the goroutine to its thread and the thread to cpu. The thread
// stays locked and is discarded when the goroutine ends, so its narrowed
// mask never serves other goroutines.
func pin(cpu int) {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		fmt.Fprintf(os.Stderr, "spinrtt: pinning to CPU %d: %v (measuring unpinned)\n", cpu, err)
	}
}
