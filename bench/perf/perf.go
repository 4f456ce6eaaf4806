// Package perf holds what gocollbench and the peer benchmarks in bench/
// share: the JSON result schema every benchmark writes (gocoll, the Gloo
// script, the Open MPI program), nccl-tests' size and bandwidth arithmetic,
// the plots, and the comparison table bench/compare prints.
//
// Conventions follow nccl-tests (doc/PERFORMANCE.md): the size of a row is
// the largest buffer a rank touches (the whole gathered buffer for allgather
// and gather, the whole send buffer for reduce_scatter and scatter, one
// rank's whole buffer for alltoall), algbw = size / time, and busbw = algbw
// times a per-collective factor that makes the figure comparable with the
// hardware's link bandwidth whatever the number of ranks.
package perf

import (
	"fmt"
	"strings"
)

// Canonical returns the spec name of a collective given its spec name or an
// nccl-tests / MPI style alias ("all_reduce", "bcast", "reducescatter"),
// and false when name is no collective perf knows.
func Canonical(name string) (string, bool) {
	n := strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(name))
	switch n {
	case "allreduce":
		return "allreduce", true
	case "reduce":
		return "reduce", true
	case "broadcast", "bcast":
		return "broadcast", true
	case "allgather":
		return "allgather", true
	case "reducescatter":
		return "reduce_scatter", true
	case "gather":
		return "gather", true
	case "scatter":
		return "scatter", true
	case "alltoall":
		return "alltoall", true
	case "allgatherv":
		return "allgatherv", true
	case "gatherv":
		return "gatherv", true
	case "scatterv":
		return "scatterv", true
	case "alltoallv":
		return "alltoallv", true
	case "reducescatterv":
		return "reduce_scatter_v", true
	case "barrier":
		return "barrier", true
	case "sendrecv", "send", "recv":
		return "sendrecv", true
	}
	return "", false
}

// Collectives lists the collectives perf knows, in spec order; "sendrecv"
// stands for the spec's send and recv, benchmarked as pairs.
var Collectives = []string{"allreduce", "reduce", "broadcast", "allgather", "reduce_scatter",
	"gather", "scatter", "alltoall", "barrier", "sendrecv",
	"allgatherv", "gatherv", "scatterv", "alltoallv", "reduce_scatter_v"}

// fixed is the fixed-count collective a vector collective's benchmark
// matches: gocollbench runs the vector ones with uniform counts, so their
// sizes and bandwidths are the fixed ones'.
func fixed(collective string) string {
	switch collective {
	case "allgatherv", "gatherv", "scatterv", "alltoallv":
		return strings.TrimSuffix(collective, "v")
	case "reduce_scatter_v":
		return "reduce_scatter"
	}
	return collective
}

// BlockFactor is how many per-rank blocks the row size of collective holds
// on n ranks: n where the largest buffer is count*size elements (allgather,
// reduce_scatter, gather, scatter, alltoall), else 1. A row of size bytes
// thus runs the collective with count = size / (BlockFactor * elemSize).
func BlockFactor(collective string, n int) int {
	switch fixed(collective) {
	case "allgather", "reduce_scatter", "gather", "scatter", "alltoall":
		return n
	}
	return 1
}

// BusFactor is nccl-tests' busbw/algbw ratio for collective on n ranks:
// allreduce 2(n-1)/n (each byte crosses a link twice in a ring, once in
// its reduce-scatter and once in its allgather phase); allgather,
// reduce_scatter, gather, scatter and alltoall (n-1)/n (a rank receives or
// sends all blocks but its own); broadcast, reduce and sendrecv 1; barrier
// 0 (it moves no data).
func BusFactor(collective string, n int) float64 {
	if n < 1 {
		return 0
	}
	nf := float64(n)
	switch fixed(collective) {
	case "allreduce":
		return 2 * (nf - 1) / nf
	case "allgather", "reduce_scatter", "gather", "scatter", "alltoall":
		return (nf - 1) / nf
	case "broadcast", "reduce", "sendrecv":
		return 1
	}
	return 0
}

// AlgBW is nccl-tests' algorithm bandwidth in GB/s (1e9 bytes per second)
// of moving size bytes in timeUS microseconds.
func AlgBW(size int64, timeUS float64) float64 {
	if timeUS <= 0 {
		return 0
	}
	return float64(size) / (timeUS * 1e-6) / 1e9
}

// BusBW is AlgBW times BusFactor.
func BusBW(collective string, n int, size int64, timeUS float64) float64 {
	return AlgBW(size, timeUS) * BusFactor(collective, n)
}

// Sizes returns the sweep nccl-tests' -b, -e and -f (or -i) make: from min
// to max bytes, multiplying by factor, or adding step when step > 0. Each
// size is rounded down to a multiple of align bytes (the element size times
// the block factor) and sizes that round to the same value appear once; a
// size below align becomes align, so every row moves at least one element.
// The sweep ends with max (aligned) even where factor does not land on it,
// so "-b 8 -e 64M -f 4" measures 64 MiB as asked.
func Sizes(min, max int64, factor float64, step int64, align int64) ([]int64, error) {
	if min <= 0 || max < min {
		return nil, fmt.Errorf("perf: bad size range %d..%d: want 0 < min <= max", min, max)
	}
	if step <= 0 && factor <= 1 {
		return nil, fmt.Errorf("perf: size factor %g must be > 1 (or give a step)", factor)
	}
	if align <= 0 {
		align = 1
	}
	var out []int64
	for s := min; s <= max; {
		a := s / align * align
		if a < align {
			a = align
		}
		if len(out) == 0 || out[len(out)-1] != a {
			out = append(out, a)
		}
		if step > 0 {
			s += step
		} else {
			next := int64(float64(s) * factor)
			if next <= s {
				next = s + 1
			}
			s = next
		}
	}
	if last := max / align * align; last >= align && out[len(out)-1] < last {
		out = append(out, last)
	}
	return out, nil
}

// ParseSize reads a byte count the way nccl-tests does: a number with an
// optional K, M or G suffix (powers of 1024), e.g. "8", "64K", "64M", "1G".
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(t, "B")
	t = strings.TrimSuffix(t, "I") // accept "MiB"
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	var n int64
	if _, err := fmt.Sscanf(t, "%d", &n); err != nil || n < 0 || fmt.Sprint(n) != t {
		return 0, fmt.Errorf("perf: bad size %q: want a byte count such as 8, 64K, 64M or 1G", s)
	}
	return n * mult, nil
}

// FormatSize prints a byte count compactly: 8B, 64KiB, 64MiB.
func FormatSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
