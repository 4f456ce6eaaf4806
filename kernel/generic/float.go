package generic

import (
	"math"
	"unsafe"
)

// Go may swap the operands of + and * (they commute), which changes which
// NaN's payload survives when both are NaN, and other CPUs than x86 make a
// different default NaN. These helpers pin every float result to x86's
// rule, so that the Go kernels equal the assembly bit for bit on every CPU.
// The float width is a constant of each instantiation (unsafe.Sizeof), so
// the compiler keeps only one branch.

// add is a + b as x86's ADDSS/ADDSD does it.
func add[T Float](a, b T) T {
	if s := a + b; s == s {
		return s
	}
	return nan(a, b)
}

// mul is a * b as x86's MULSS/MULSD does it.
func mul[T Float](a, b T) T {
	if p := a * b; p == p {
		return p
	}
	return nan(a, b)
}

// fmin is the smaller of a and b; of -0 and +0, -0; NaN if either is.
func fmin[T Float](a, b T) T {
	switch {
	case a < b:
		return a
	case b < a:
		return b
	case a == b:
		return orBits(a, b)
	}
	return nan(a, b)
}

// fmax is the larger of a and b; of -0 and +0, +0; NaN if either is.
func fmax[T Float](a, b T) T {
	switch {
	case a > b:
		return a
	case b > a:
		return b
	case a == b:
		return andBits(a, b)
	}
	return nan(a, b)
}

// nan is the NaN x86 returns for a op b when the result is NaN: a's if a
// is NaN, else b's, made quiet; the default NaN if neither is.
func nan[T Float](a, b T) T {
	if unsafe.Sizeof(a) == 4 {
		x, y := float32(a), float32(b)
		switch {
		case x != x:
			return T(math.Float32frombits(math.Float32bits(x) | 0x400000))
		case y != y:
			return T(math.Float32frombits(math.Float32bits(y) | 0x400000))
		}
		return T(math.Float32frombits(0xffc00000))
	}
	x, y := float64(a), float64(b)
	switch {
	case x != x:
		return T(math.Float64frombits(math.Float64bits(x) | 1<<51))
	case y != y:
		return T(math.Float64frombits(math.Float64bits(y) | 1<<51))
	}
	return T(math.Float64frombits(0xfff8000000000000))
}

// orBits is a with b's bits OR-ed in: of equal a and b, -0 if either is.
func orBits[T Float](a, b T) T {
	if unsafe.Sizeof(a) == 4 {
		return T(math.Float32frombits(math.Float32bits(float32(a)) | math.Float32bits(float32(b))))
	}
	return T(math.Float64frombits(math.Float64bits(float64(a)) | math.Float64bits(float64(b))))
}

// andBits is a with b's bits AND-ed in: of equal a and b, +0 unless both
// are -0.
func andBits[T Float](a, b T) T {
	if unsafe.Sizeof(a) == 4 {
		return T(math.Float32frombits(math.Float32bits(float32(a)) & math.Float32bits(float32(b))))
	}
	return T(math.Float64frombits(math.Float64bits(float64(a)) & math.Float64bits(float64(b))))
}
