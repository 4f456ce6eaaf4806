package kernel

import (
	"sync"
	"unsafe"
)

// Func reduces n elements: dst[i] = src0[i] op src1[i] op ... for the
// nsrc >= 1 input pointers at srcs, folding left to right. It handles every
// element, tail included. dst may equal an input pointer; it must not
// partly overlap one.
type Func func(dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int)

// Impl is one reduction (one dtype x op) at every level: Impl[l] is the
// kernel written for level l, nil where that level has none of its own.
// Generic is never nil in a registered Impl.
type Impl [NumISA]Func

// At returns the kernel that runs at level l: the one of the highest level
// up to l that has one.
func (im *Impl) At(l ISA) Func {
	for ; l > Generic; l-- {
		if f := im[l]; f != nil {
			return f
		}
	}
	return im[Generic]
}

// Active returns the kernel that runs at the active level.
func (im *Impl) Active() Func { return im.At(Active()) }

// ptrArrays holds the input pointer arrays handed to kernels. A kernel is
// called through a func value, so escape analysis must assume the array
// escapes; pooling it keeps Run free of allocations for up to 16 inputs.
var ptrArrays = sync.Pool{New: func() any { return new([16]unsafe.Pointer) }}

// A Reducer runs kernels with scratch space of its own for the input
// pointers: a backend that reduces small messages in a loop keeps one and
// saves the pool round trip a nil *Reducer pays on every call. The zero
// value is ready to use; a Reducer must not be used by two goroutines at
// once. A nil *Reducer is valid and uses pooled scratch.
type Reducer struct {
	ptrs [16]unsafe.Pointer
}

// Run calls f on n elements of dst and srcs. The caller has checked that
// every slice holds n elements and that none partly overlaps dst.
func (r *Reducer) Run(f Func, dst []byte, srcs [][]byte, n int) {
	if n == 0 || len(srcs) == 0 {
		return
	}
	var arr *[16]unsafe.Pointer
	pooled := false
	if r != nil {
		arr = &r.ptrs
	} else if len(srcs) <= 16 {
		arr, pooled = ptrArrays.Get().(*[16]unsafe.Pointer), true
	}
	var ptrs []unsafe.Pointer
	if arr != nil && len(srcs) <= len(arr) {
		ptrs = arr[:len(srcs)]
	} else {
		ptrs = make([]unsafe.Pointer, len(srcs))
	}
	for i, s := range srcs {
		ptrs[i] = unsafe.Pointer(unsafe.SliceData(s))
	}
	f(unsafe.Pointer(unsafe.SliceData(dst)), &ptrs[0], len(ptrs), n)
	clear(ptrs) // keep no buffer alive from the pool or the Reducer
	if pooled {
		ptrArrays.Put(arr)
	}
}

// PartlyOverlap reports whether a and b share memory without being the
// same slice start: the aliasing no kernel and no collective accepts.
func PartlyOverlap(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	pa, pb := uintptr(unsafe.Pointer(unsafe.SliceData(a))), uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return pa != pb && pa < pb+uintptr(len(b)) && pb < pa+uintptr(len(a))
}
