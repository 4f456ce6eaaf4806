// Package generic is gocoll's pure-Go reduction kernels: the kernel.Generic
// level of every dtype x op, the level every CPU runs, and the reference
// the assembly levels are tested against bit for bit. They depend on no
// spec: a generated kernels package instantiates them in its table
// (generic.IntSum[int8], generic.HalfMax[half.BFloat16], ...).
//
// Every function here is a kernel.Func (or, for the Divide functions, a
// core.Type's Divide) and keeps the numerics package kernel documents:
// inputs are folded left to right, each element of each input read once
// and each element of dst written once, after its inputs are read (so dst
// may be one of the inputs); no FMA; float results that are NaN follow x86
// (the first NaN operand made quiet, else the default NaN), min and max
// order -0 below +0 and let NaN win; 16-bit floats are widened to float32,
// accumulated there across all inputs and rounded once to nearest even;
// integers wrap as Go's do.
//
// Integer and float kernels fold each element across the inputs with the
// accumulator in a register; 16-bit float kernels widen chunks of a few
// hundred elements into float32 scratch arrays on the stack and fold
// those.
package generic

import (
	"unsafe"

	"github.com/gocoll/gocoll/half"
)

// Int is the integer element types: two's complement, wrapping.
type Int interface {
	~int8 | ~int16 | ~int32 | ~int64 | ~uint8 | ~uint16 | ~uint32 | ~uint64
}

// Float is the float element types that reduce in their own width.
type Float interface{ ~float32 | ~float64 }

// Half is the 16-bit float element types, which reduce in float32.
type Half interface{ half.BFloat16 | half.Float16 }

// Complex is the complex element types: pairs of floats, reduced as
// their parts.
type Complex interface{ ~complex64 | ~complex128 }

// chunk is how many 16-bit floats a kernel widens into its float32
// scratch arrays at a time.
const chunk = 256

// at is the m elements of type T at element offset off from p.
func at[T any](p unsafe.Pointer, off, m int) []T {
	var z T
	return unsafe.Slice((*T)(unsafe.Add(p, uintptr(off)*unsafe.Sizeof(z))), m)
}

// op selects the element-wise operation of a fold. A fold switches on it
// outside its loops; a func value instead would cost a call per element
// (or per chunk, and make the scratch arrays escape to the heap).
type op uint8

const (
	opSum op = iota
	opProd
	opMin
	opMax
	opAnd
	opOr
	opXor
)

// intFold runs a kernel on integers: for each element, the first input's
// value is folded with every further input's, left to right, and the
// result written to dst once, after all its inputs are read. The switch
// on o sits outside the loops, which keep the accumulator in a register.
func intFold[T Int](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int, o op) {
	in := unsafe.Slice(srcs, nsrc)
	d := unsafe.Slice((*T)(dst), n)
	s0 := unsafe.Slice((*T)(in[0]), n)
	rest := in[1:]
	var z T
	size := unsafe.Sizeof(z)
	switch o {
	case opSum:
		for i := range d {
			acc, off := s0[i], uintptr(i)*size
			for _, p := range rest {
				acc += *(*T)(unsafe.Add(p, off))
			}
			d[i] = acc
		}
	case opProd:
		for i := range d {
			acc, off := s0[i], uintptr(i)*size
			for _, p := range rest {
				acc *= *(*T)(unsafe.Add(p, off))
			}
			d[i] = acc
		}
	case opMin:
		for i := range d {
			acc, off := s0[i], uintptr(i)*size
			for _, p := range rest {
				acc = min(acc, *(*T)(unsafe.Add(p, off)))
			}
			d[i] = acc
		}
	case opMax:
		for i := range d {
			acc, off := s0[i], uintptr(i)*size
			for _, p := range rest {
				acc = max(acc, *(*T)(unsafe.Add(p, off)))
			}
			d[i] = acc
		}
	case opAnd:
		for i := range d {
			acc, off := s0[i], uintptr(i)*size
			for _, p := range rest {
				acc &= *(*T)(unsafe.Add(p, off))
			}
			d[i] = acc
		}
	case opOr:
		for i := range d {
			acc, off := s0[i], uintptr(i)*size
			for _, p := range rest {
				acc |= *(*T)(unsafe.Add(p, off))
			}
			d[i] = acc
		}
	case opXor:
		for i := range d {
			acc, off := s0[i], uintptr(i)*size
			for _, p := range rest {
				acc ^= *(*T)(unsafe.Add(p, off))
			}
			d[i] = acc
		}
	}
}

// IntSum is the wrapping sum of integers.
func IntSum[T Int](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	intFold[T](dst, srcs, nsrc, n, opSum)
}

// IntProd is the wrapping product of integers.
func IntProd[T Int](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	intFold[T](dst, srcs, nsrc, n, opProd)
}

// IntMin is the minimum of integers, in T's order (signed or unsigned).
func IntMin[T Int](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	intFold[T](dst, srcs, nsrc, n, opMin)
}

// IntMax is the maximum of integers, in T's order (signed or unsigned).
func IntMax[T Int](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	intFold[T](dst, srcs, nsrc, n, opMax)
}

// IntAnd is the bitwise AND of integers.
func IntAnd[T Int](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	intFold[T](dst, srcs, nsrc, n, opAnd)
}

// IntOr is the bitwise OR of integers.
func IntOr[T Int](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	intFold[T](dst, srcs, nsrc, n, opOr)
}

// IntXor is the bitwise XOR of integers.
func IntXor[T Int](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	intFold[T](dst, srcs, nsrc, n, opXor)
}

// floatFold is intFold for floats, with x86's results (see add).
func floatFold[T Float](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int, o op) {
	in := unsafe.Slice(srcs, nsrc)
	d := unsafe.Slice((*T)(dst), n)
	s0 := unsafe.Slice((*T)(in[0]), n)
	rest := in[1:]
	var z T
	size := unsafe.Sizeof(z)
	switch o {
	case opSum:
		for i := range d {
			acc, off := s0[i], uintptr(i)*size
			for _, p := range rest {
				acc = add(acc, *(*T)(unsafe.Add(p, off)))
			}
			d[i] = acc
		}
	case opProd:
		for i := range d {
			acc, off := s0[i], uintptr(i)*size
			for _, p := range rest {
				acc = mul(acc, *(*T)(unsafe.Add(p, off)))
			}
			d[i] = acc
		}
	case opMin:
		for i := range d {
			acc, off := s0[i], uintptr(i)*size
			for _, p := range rest {
				acc = fmin(acc, *(*T)(unsafe.Add(p, off)))
			}
			d[i] = acc
		}
	case opMax:
		for i := range d {
			acc, off := s0[i], uintptr(i)*size
			for _, p := range rest {
				acc = fmax(acc, *(*T)(unsafe.Add(p, off)))
			}
			d[i] = acc
		}
	}
}

// floatOp folds x into acc element-wise, with x86's results (see add):
// the 16-bit floats' chunks, widened to float32.
func floatOp[T Float](o op, acc, x []T) {
	x = x[:len(acc)]
	switch o {
	case opSum:
		for i := range acc {
			acc[i] = add(acc[i], x[i])
		}
	case opProd:
		for i := range acc {
			acc[i] = mul(acc[i], x[i])
		}
	case opMin:
		for i := range acc {
			acc[i] = fmin(acc[i], x[i])
		}
	case opMax:
		for i := range acc {
			acc[i] = fmax(acc[i], x[i])
		}
	}
}

// FloatSum is the sum of floats, as x86's ADDSS/ADDSD computes it.
func FloatSum[T Float](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	floatFold[T](dst, srcs, nsrc, n, opSum)
}

// FloatProd is the product of floats, as x86's MULSS/MULSD computes it.
func FloatProd[T Float](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	floatFold[T](dst, srcs, nsrc, n, opProd)
}

// FloatMin is the minimum of floats: -0 is below +0, NaN wins.
func FloatMin[T Float](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	floatFold[T](dst, srcs, nsrc, n, opMin)
}

// FloatMax is the maximum of floats: +0 is above -0, NaN wins.
func FloatMax[T Float](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	floatFold[T](dst, srcs, nsrc, n, opMax)
}

// FloatDivide divides the n elements at p by nranks in place, each
// rounded once: avg's finish step (a core.Type's Divide).
func FloatDivide[T Float](p unsafe.Pointer, n, nranks int) {
	div := T(nranks)
	s := unsafe.Slice((*T)(p), n)
	for i, v := range s {
		s[i] = v / div
	}
}

// halfFold is floatFold for 16-bit floats: every chunk is widened to
// float32, accumulated there and rounded once.
func halfFold[T Half](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int, o op) {
	bf := isBF16[T]()
	in := unsafe.Slice(srcs, nsrc)
	var acc, x [chunk]float32
	for off := 0; off < n; off += chunk {
		m := min(chunk, n-off)
		a, xs := acc[:m], x[:m]
		widen(bf, a, in[0], off)
		for _, p := range in[1:] {
			widen(bf, xs, p, off)
			floatOp(o, a, xs)
		}
		narrow(bf, dst, off, a)
	}
}

// HalfSum is the sum of 16-bit floats, in float32, rounded once.
func HalfSum[T Half](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	halfFold[T](dst, srcs, nsrc, n, opSum)
}

// HalfProd is the product of 16-bit floats, in float32, rounded once.
func HalfProd[T Half](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	halfFold[T](dst, srcs, nsrc, n, opProd)
}

// HalfMin is the minimum of 16-bit floats, taken in float32.
func HalfMin[T Half](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	halfFold[T](dst, srcs, nsrc, n, opMin)
}

// HalfMax is the maximum of 16-bit floats, taken in float32.
func HalfMax[T Half](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	halfFold[T](dst, srcs, nsrc, n, opMax)
}

// HalfDivide divides the n elements at p by nranks in place: each is
// widened to float32, divided there and rounded once.
func HalfDivide[T Half](p unsafe.Pointer, n, nranks int) {
	bf := isBF16[T]()
	div := float32(nranks)
	var buf [chunk]float32
	for off := 0; off < n; off += chunk {
		m := min(chunk, n-off)
		b := buf[:m]
		widen(bf, b, p, off)
		for i := range b {
			b[i] /= div
		}
		narrow(bf, p, off, b)
	}
}

// isBF16 reports whether T is bfloat16 (else it is float16).
func isBF16[T Half]() bool {
	var z T
	_, ok := any(z).(half.BFloat16)
	return ok
}

// widen converts len(f) 16-bit floats at element offset off from p to
// float32: bfloat16 if bf, else float16.
func widen(bf bool, f []float32, p unsafe.Pointer, off int) {
	if bf {
		for i, h := range at[half.BFloat16](p, off, len(f)) {
			f[i] = h.Float32()
		}
		return
	}
	for i, h := range at[half.Float16](p, off, len(f)) {
		f[i] = h.Float32()
	}
}

// narrow rounds f to 16-bit floats at element offset off from p.
func narrow(bf bool, p unsafe.Pointer, off int, f []float32) {
	if bf {
		s := at[half.BFloat16](p, off, len(f))
		for i, v := range f {
			s[i] = half.BFloat16FromFloat32(v)
		}
		return
	}
	s := at[half.Float16](p, off, len(f))
	for i, v := range f {
		s[i] = half.Float16FromFloat32(v)
	}
}

// ComplexSum is the sum of complex numbers: the sum of their real parts
// and of their imaginary parts, each as FloatSum computes it.
func ComplexSum[T Complex](dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	var z T
	if unsafe.Sizeof(z) == 8 {
		FloatSum[float32](dst, srcs, nsrc, 2*n)
		return
	}
	FloatSum[float64](dst, srcs, nsrc, 2*n)
}

// ComplexDivide divides the n complex numbers at p by nranks in place:
// both parts, as FloatDivide does.
func ComplexDivide[T Complex](p unsafe.Pointer, n, nranks int) {
	var z T
	if unsafe.Sizeof(z) == 8 {
		FloatDivide[float32](p, 2*n, nranks)
		return
	}
	FloatDivide[float64](p, 2*n, nranks)
}
