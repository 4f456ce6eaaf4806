package gen

// kernelsDoc is kernels' package documentation, including the contract
// between the Go side (this generator) and the assembly (package asm).
const kernelsDoc = `// Package kernels reduces buffers element-wise for gocoll's backends: the
// n-ary reduce dst[i] = src0[i] op src1[i] op ... op src(n-1)[i] for every
// dtype x op of the spec, in AVX-512 and AVX2 assembly where the CPU has it
// and in pure Go everywhere (the reference the assembly is tested against).
//
// Numerics, shared bit for bit by the Go, AVX2 and AVX-512 kernels: inputs
// are folded left to right, each read once, dst written once, no FMA;
// bfloat16 and float16 are widened to float32, accumulated there across all
// inputs and rounded once to nearest even; float ops follow x86 (a NaN
// result is the first NaN operand made quiet, or the default NaN); min and
// max order -0 below +0 and let NaN win; integers wrap as Go's do. Avg
// reduces as a sum: Finish divides the final result by the number of ranks
// once.
//
// The level runs at Detect's best unless SetISA or the environment
// variable GOCOLL_ISA (generic, avx2 or avx512) says otherwise; a level the
// CPU lacks is refused (CheckEnv reports a GOCOLL_ISA that was not followed).
// Levels are the CPU's: built with -tags purego, or for an architecture the
// assembly does not cover, every level runs the pure-Go kernels.
//
// Between the Go side and the assembly generator: a rawKernel reduces n
// elements from nsrc >= 1 input pointers, tail included, and
// archKernel(isa, dt, op) returns the assembly kernel for a level, or nil
// for none; when no assembly is generated for the target, the generator
// emits an archKernel that always returns nil.
package kernels
`

// isaSource is kernels' ISA selection; it does not depend on the spec.
const isaSource = `package kernels

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"github.com/klauspost/cpuid/v2"
)

// ISA is an instruction-set level the kernels run at.
type ISA int

const (
	// Generic is the pure-Go kernels, on any CPU.
	Generic ISA = iota
	// AVX2 is the AVX2 kernels; they need AVX2, FMA and F16C.
	AVX2
	// AVX512 is the AVX-512 kernels; they need AVX-512 F, BW, VL and DQ
	// (and everything AVX2 needs).
	AVX512
)

// String is the level's name, as GOCOLL_ISA spells it.
func (i ISA) String() string {
	switch i {
	case Generic:
		return "generic"
	case AVX2:
		return "avx2"
	case AVX512:
		return "avx512"
	}
	return fmt.Sprintf("ISA(%d)", int(i))
}

// ParseISA parses a level name: generic, avx2 or avx512.
func ParseISA(s string) (ISA, error) {
	for _, i := range []ISA{Generic, AVX2, AVX512} {
		if strings.EqualFold(s, i.String()) {
			return i, nil
		}
	}
	return Generic, fmt.Errorf("kernels: unknown ISA level %q: use generic, avx2 or avx512", s)
}

// Detect returns the best level this CPU (and its operating system's
// register saving) supports.
func Detect() ISA {
	c := &cpuid.CPU
	avx2 := c.Supports(cpuid.AVX2, cpuid.FMA3, cpuid.F16C)
	if avx2 && c.Supports(cpuid.AVX512F, cpuid.AVX512BW, cpuid.AVX512VL, cpuid.AVX512DQ) {
		return AVX512
	}
	if avx2 {
		return AVX2
	}
	return Generic
}

// EnvISA is the environment variable that picks a level at start-up:
// generic, avx2 or avx512. Unset, the kernels run at Detect's level.
const EnvISA = "GOCOLL_ISA"

var (
	best   = Detect()
	active atomic.Pointer[kernelSet]
	sets   [AVX512 + 1]*kernelSet
	// envErr is why GOCOLL_ISA could not be followed; see CheckEnv.
	envErr error
)

func init() {
	for i := Generic; i <= best; i++ {
		sets[i] = buildSet(i)
	}
	level := best
	if v := os.Getenv(EnvISA); v != "" {
		want, err := ParseISA(v)
		switch {
		case err != nil:
			envErr = fmt.Errorf("%s=%q: %w", EnvISA, v, err)
		case want > best:
			envErr = fmt.Errorf("%s=%s, but this CPU supports at most %s: unset it or pick a level up to %s", EnvISA, v, best, best)
		default:
			level = want
		}
	}
	active.Store(sets[level])
}

// CheckEnv reports whether GOCOLL_ISA was followed: nil if it is unset or
// named a level this CPU has; otherwise an error saying what to change.
// A bad GOCOLL_ISA never stops a program: the kernels run at Detect's
// level, and programs or tests that must honour the variable call CheckEnv.
func CheckEnv() error { return envErr }

// Active returns the level the kernels run at now.
func Active() ISA { return active.Load().isa }

// SetISA makes the kernels run at level isa from now on, for every
// goroutine. It fails, changing nothing, if the CPU lacks that level.
func SetISA(isa ISA) error {
	if isa < Generic || isa > AVX512 {
		return fmt.Errorf("kernels: no ISA level %d: use Generic, AVX2 or AVX512", int(isa))
	}
	if isa > best {
		return fmt.Errorf("kernels: this CPU lacks %s (it supports at most %s): pick a level up to %s", isa, best, best)
	}
	active.Store(sets[isa])
	return nil
}
`

// reduceSource is kernels' Reduce and Finish; the tables it indexes are
// generated from the spec.
const reduceSource = `package kernels

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/gocoll/gocoll/core"
)

// rawKernel reduces n elements: dst[i] = src0[i] op src1[i] op ... for the
// nsrc >= 1 input pointers at srcs, folding left to right. It handles every
// element, tail included. dst may equal an input pointer.
type rawKernel func(dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int)

// kernelSpec is one dtype x op of the spec.
type kernelSpec struct {
	dt      core.DType
	op      core.Op
	asmOp   core.Op   // the op whose kernel runs (avg runs sum's)
	generic rawKernel // the pure-Go kernel, the reference
}

// kernelSet is the kernel of every dtype x op at one ISA level.
type kernelSet struct {
	isa ISA
	k   [numDT][numOp]rawKernel
}

// buildSet picks, for every dtype x op, the assembly kernel of the highest
// level up to isa that has one, else the pure-Go kernel.
func buildSet(isa ISA) *kernelSet {
	ks := &kernelSet{isa: isa}
	for _, s := range kernelSpecs {
		k := s.generic
	levels:
		for l := isa; l > Generic; l-- {
			for _, op := range []core.Op{s.op, s.asmOp} {
				if a := archKernel(l, s.dt, op); a != nil {
					k = a
					break levels
				}
			}
		}
		ks.k[s.dt][s.op] = k
	}
	return ks
}

// Supports reports whether the spec gives dtype dt the op op.
func Supports(dt core.DType, op core.Op) bool {
	return int(dt) < numDT && int(op) < numOp && sets[Generic].k[dt][op] != nil
}

func lookup(set *kernelSet, dt core.DType, op core.Op) (rawKernel, int, error) {
	if !Supports(dt, op) {
		return nil, 0, fmt.Errorf("kernels: %w: no %s kernel for %s; use an op the spec lists for that dtype", core.ErrUnsupported, opName(op), dtName(dt))
	}
	return set.k[dt][op], dtSizes[dt], nil
}

func dtName(dt core.DType) string {
	if int(dt) < numDT && dtNames[dt] != "" {
		return dtNames[dt]
	}
	return fmt.Sprintf("dtype(%d)", dt)
}

func opName(op core.Op) string {
	if int(op) < numOp && opNames[op] != "" {
		return opNames[op]
	}
	return fmt.Sprintf("op(%d)", op)
}

// Reduce sets dst[i] = srcs[0][i] op srcs[1][i] op ... op srcs[n-1][i] for
// every element of dtype dt in dst, folding left to right, reading each
// input once and writing dst once. Every src must be as long as dst, a
// whole number of elements. dst may be exactly one of srcs (same start)
// but must not partly overlap any. For an op with a finish step (avg) it
// sums: call Finish once on the final result.
func Reduce(dt core.DType, op core.Op, dst []byte, srcs [][]byte) error {
	return reduceWith(active.Load(), dt, op, dst, srcs, nil)
}

// A Reducer is Reduce with scratch space of its own: a caller that reduces
// small messages in a loop (a backend's hot path) keeps one and saves the
// pool round trip that Reduce pays on every call. The zero value is ready
// to use; a Reducer must not be used by two goroutines at once.
type Reducer struct {
	ptrs [16]unsafe.Pointer
}

// Reduce is the package-level Reduce, with r's scratch space.
func (r *Reducer) Reduce(dt core.DType, op core.Op, dst []byte, srcs [][]byte) error {
	return reduceWith(active.Load(), dt, op, dst, srcs, &r.ptrs)
}

// ReduceGeneric is Reduce on the pure-Go kernels whatever the active level:
// the reference that conformance tests compare every backend and level
// against, without switching the kernels the rest of the process runs.
func ReduceGeneric(dt core.DType, op core.Op, dst []byte, srcs [][]byte) error {
	return reduceWith(sets[Generic], dt, op, dst, srcs, nil)
}

// reduceWith checks its arguments and runs set's kernel; scratch, if not
// nil, holds the kernel's pointer array instead of a pooled one.
func reduceWith(set *kernelSet, dt core.DType, op core.Op, dst []byte, srcs [][]byte, scratch *[16]unsafe.Pointer) error {
	k, size, err := lookup(set, dt, op)
	if err != nil {
		return err
	}
	if len(srcs) == 0 {
		return fmt.Errorf("kernels: Reduce needs at least one source")
	}
	if len(dst)%size != 0 {
		return fmt.Errorf("kernels: len(dst) = %d is not a whole number of %d-byte %s elements", len(dst), size, dtName(dt))
	}
	for i, s := range srcs {
		if len(s) != len(dst) {
			return fmt.Errorf("kernels: len(srcs[%d]) = %d but len(dst) = %d: pass inputs as long as dst", i, len(s), len(dst))
		}
		if partlyOverlap(dst, s) {
			return fmt.Errorf("kernels: dst partly overlaps srcs[%d]: pass the same slice or disjoint ones", i)
		}
	}
	if len(dst) == 0 {
		return nil
	}
	run(k, dst, srcs, len(dst)/size, scratch)
	return nil
}

// partlyOverlap reports whether a and b share memory without starting at
// the same address.
func partlyOverlap[T any](a, b []T) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	var z T
	sz := unsafe.Sizeof(z)
	pa, pb := uintptr(unsafe.Pointer(unsafe.SliceData(a))), uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return pa != pb && pa < pb+uintptr(len(b))*sz && pb < pa+uintptr(len(a))*sz
}

// ptrArrays holds the input pointer arrays handed to kernels. A kernel is
// called through a func value, so escape analysis must assume the array
// escapes; pooling it keeps Reduce free of allocations for up to 16 inputs.
var ptrArrays = sync.Pool{New: func() any { return new([16]unsafe.Pointer) }}

// run calls k on n elements of dst and srcs, whose lengths are checked;
// the pointer array lives in scratch if given, else in a pooled array.
func run[T any](k rawKernel, dst []T, srcs [][]T, n int, scratch *[16]unsafe.Pointer) {
	arr, pooled := scratch, false
	if arr == nil && len(srcs) <= len(arr) {
		arr, pooled = ptrArrays.Get().(*[16]unsafe.Pointer), true
	}
	var ptrs []unsafe.Pointer
	if len(srcs) <= len(arr) {
		ptrs = arr[:len(srcs)]
	} else {
		ptrs = make([]unsafe.Pointer, len(srcs))
	}
	for i, s := range srcs {
		ptrs[i] = unsafe.Pointer(unsafe.SliceData(s))
	}
	k(unsafe.Pointer(unsafe.SliceData(dst)), &ptrs[0], len(ptrs), n)
	clear(ptrs) // do not keep the buffers alive from the pool or the Reducer
	if pooled {
		ptrArrays.Put(arr)
	}
}

// reduceTyped is Reduce on typed slices.
func reduceTyped[T any](dt core.DType, op core.Op, dst []T, srcs [][]T) error {
	k, _, err := lookup(active.Load(), dt, op)
	if err != nil {
		return err
	}
	if len(srcs) == 0 {
		return fmt.Errorf("kernels: Reduce needs at least one source")
	}
	for i, s := range srcs {
		if len(s) != len(dst) {
			return fmt.Errorf("kernels: len(srcs[%d]) = %d but len(dst) = %d: pass inputs as long as dst", i, len(s), len(dst))
		}
		if partlyOverlap(dst, s) {
			return fmt.Errorf("kernels: dst partly overlaps srcs[%d]: pass the same slice or disjoint ones", i)
		}
	}
	if len(dst) == 0 {
		return nil
	}
	run(k, dst, srcs, len(dst), nil)
	return nil
}

// Finish completes a reduction of dtype dt with op on buf, the final
// result: for an op with a finish step (avg) it divides every element by
// nranks once (16-bit floats are widened, divided in float32 and rounded
// once); for other ops it does nothing. Call it exactly once per result.
func Finish(dt core.DType, op core.Op, buf []byte, nranks int) error {
	if !Supports(dt, op) {
		return fmt.Errorf("kernels: %w: %s has no op %s", core.ErrUnsupported, dtName(dt), opName(op))
	}
	size := dtSizes[dt]
	if len(buf)%size != 0 {
		return fmt.Errorf("kernels: len(buf) = %d is not a whole number of %d-byte %s elements", len(buf), size, dtName(dt))
	}
	return finish(dt, op, unsafe.Pointer(unsafe.SliceData(buf)), len(buf)/size, nranks)
}

func finishTyped[T any](dt core.DType, op core.Op, buf []T, nranks int) error {
	if !Supports(dt, op) {
		return fmt.Errorf("kernels: %w: %s has no op %s", core.ErrUnsupported, dtName(dt), opName(op))
	}
	return finish(dt, op, unsafe.Pointer(unsafe.SliceData(buf)), len(buf), nranks)
}

func finish(dt core.DType, op core.Op, p unsafe.Pointer, n, nranks int) error {
	f := finishers[dt][op]
	if f == nil {
		return nil
	}
	if nranks < 1 {
		return fmt.Errorf("kernels: Finish with %d ranks: pass the number of ranks that contributed, at least 1", nranks)
	}
	if n > 0 {
		f(p, n, nranks)
	}
	return nil
}
`
