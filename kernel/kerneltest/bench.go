package kerneltest

import (
	"fmt"
	"testing"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/kernel"
)

// benchSizes are the buffer sizes the benchmarks run.
var benchSizes = []struct {
	name  string
	bytes int
}{{"16KiB", 16 << 10}, {"64MiB", 64 << 20}}

// BenchReduce benchmarks op on each dtype in dts at every level this CPU
// has, for n = 2, 4 and 8 inputs of 16 KiB and 64 MiB, and reports GB/s
// over every byte read and written. -short skips 64 MiB.
func BenchReduce(b *testing.B, op core.Op, dts ...core.DType) {
	for _, sz := range benchSizes {
		if testing.Short() && sz.bytes > 1<<20 {
			continue
		}
		for _, n := range []int{2, 4, 8} {
			srcs := make([][]byte, n)
			for i := range srcs {
				srcs[i] = make([]byte, sz.bytes)
				for j := range srcs[i] {
					srcs[i][j] = byte(i + j%61) // finite values, no NaN slow paths
				}
			}
			dst := make([]byte, sz.bytes)
			touch(dst)
			for _, dt := range dts {
				ty := core.LookupType(dt)
				if ty == nil || ty.Kernel(op) == nil {
					b.Fatalf("no registered kernel for dtype %v op %v", dt, op)
				}
				k := ty.Kernel(op)
				for isa := kernel.Generic; isa <= kernel.Best(); isa++ {
					b.Run(fmt.Sprintf("%s/%s/n=%d/%s/%s", ty.Name, k.Op.Name, n, sz.name, isa), func(b *testing.B) {
						var red kernel.Reducer
						b.SetBytes(int64((n + 1) * sz.bytes))
						for b.Loop() {
							k.ReduceAt(isa, &red, dst, srcs)
						}
					})
				}
			}
		}
	}
}

// touch writes every page of buf, so that neither page faults nor reads of
// the shared zero page (a fresh allocation's) flatter or burden a timing.
func touch(buf []byte) {
	for i := range buf {
		buf[i] = byte(i % 251)
	}
}

// BenchCopy is Go's copy() of one buffer of each size BenchReduce runs,
// counting bytes read and written, for comparison.
func BenchCopy(b *testing.B) {
	for _, sz := range benchSizes {
		if testing.Short() && sz.bytes > 1<<20 {
			continue
		}
		src, dst := make([]byte, sz.bytes), make([]byte, sz.bytes)
		touch(src)
		touch(dst)
		b.Run(sz.name, func(b *testing.B) {
			b.SetBytes(int64(2 * sz.bytes))
			for b.Loop() {
				copy(dst, src)
			}
		})
	}
}
