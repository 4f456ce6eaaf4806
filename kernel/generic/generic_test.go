package generic_test

import (
	"testing"
	"unsafe"

	"github.com/gocoll/gocoll/half"
	"github.com/gocoll/gocoll/kernel"
	"github.com/gocoll/gocoll/kernel/generic"
	"github.com/gocoll/gocoll/kernel/kerneltest"
)

// ops lists every kernel of the package for the oracle.
var ops = []struct {
	elem, op string
	f        kernel.Func
}{
	{"int8", "sum", generic.IntSum[int8]}, {"int8", "prod", generic.IntProd[int8]}, {"int8", "min", generic.IntMin[int8]}, {"int8", "max", generic.IntMax[int8]},
	{"int8", "band", generic.IntAnd[int8]}, {"int8", "bor", generic.IntOr[int8]}, {"int8", "bxor", generic.IntXor[int8]},
	{"uint8", "sum", generic.IntSum[uint8]}, {"uint8", "prod", generic.IntProd[uint8]}, {"uint8", "min", generic.IntMin[uint8]}, {"uint8", "max", generic.IntMax[uint8]},
	{"uint8", "band", generic.IntAnd[uint8]}, {"uint8", "bor", generic.IntOr[uint8]}, {"uint8", "bxor", generic.IntXor[uint8]},
	{"int16", "sum", generic.IntSum[int16]}, {"int16", "prod", generic.IntProd[int16]}, {"int16", "min", generic.IntMin[int16]}, {"int16", "max", generic.IntMax[int16]},
	{"uint16", "sum", generic.IntSum[uint16]}, {"uint16", "prod", generic.IntProd[uint16]}, {"uint16", "min", generic.IntMin[uint16]}, {"uint16", "max", generic.IntMax[uint16]},
	{"int32", "sum", generic.IntSum[int32]}, {"int32", "prod", generic.IntProd[int32]}, {"int32", "min", generic.IntMin[int32]}, {"int32", "max", generic.IntMax[int32]},
	{"int32", "band", generic.IntAnd[int32]}, {"int32", "bor", generic.IntOr[int32]}, {"int32", "bxor", generic.IntXor[int32]},
	{"uint32", "sum", generic.IntSum[uint32]}, {"uint32", "prod", generic.IntProd[uint32]}, {"uint32", "min", generic.IntMin[uint32]}, {"uint32", "max", generic.IntMax[uint32]},
	{"int64", "sum", generic.IntSum[int64]}, {"int64", "prod", generic.IntProd[int64]}, {"int64", "min", generic.IntMin[int64]}, {"int64", "max", generic.IntMax[int64]},
	{"int64", "band", generic.IntAnd[int64]}, {"int64", "bor", generic.IntOr[int64]}, {"int64", "bxor", generic.IntXor[int64]},
	{"uint64", "sum", generic.IntSum[uint64]}, {"uint64", "prod", generic.IntProd[uint64]}, {"uint64", "min", generic.IntMin[uint64]}, {"uint64", "max", generic.IntMax[uint64]},
	{"float32", "sum", generic.FloatSum[float32]}, {"float32", "prod", generic.FloatProd[float32]}, {"float32", "min", generic.FloatMin[float32]}, {"float32", "max", generic.FloatMax[float32]},
	{"float64", "sum", generic.FloatSum[float64]}, {"float64", "prod", generic.FloatProd[float64]}, {"float64", "min", generic.FloatMin[float64]}, {"float64", "max", generic.FloatMax[float64]},
	{"BFloat16", "sum", generic.HalfSum[half.BFloat16]}, {"BFloat16", "prod", generic.HalfProd[half.BFloat16]}, {"BFloat16", "min", generic.HalfMin[half.BFloat16]}, {"BFloat16", "max", generic.HalfMax[half.BFloat16]},
	{"Float16", "sum", generic.HalfSum[half.Float16]}, {"Float16", "prod", generic.HalfProd[half.Float16]}, {"Float16", "min", generic.HalfMin[half.Float16]}, {"Float16", "max", generic.HalfMax[half.Float16]},
	{"complex64", "sum", generic.ComplexSum[complex64]},
}

func TestOracle(t *testing.T) {
	for _, o := range ops {
		t.Run(o.elem+"/"+o.op, func(t *testing.T) { kerneltest.CheckOracle(t, o.elem, o.op, o.f) })
	}
}

func TestDivide(t *testing.T) {
	for elem, f := range map[string]func(unsafe.Pointer, int, int){
		"float32":   generic.FloatDivide[float32],
		"float64":   generic.FloatDivide[float64],
		"BFloat16":  generic.HalfDivide[half.BFloat16],
		"Float16":   generic.HalfDivide[half.Float16],
		"complex64": generic.ComplexDivide[complex64],
	} {
		t.Run(elem, func(t *testing.T) { kerneltest.CheckDivide(t, elem, f) })
	}
}

// TestComplexIsGoArithmetic checks ComplexSum against Go's own complex
// addition where no NaN can make the two differ.
func TestComplexIsGoArithmetic(t *testing.T) {
	a := []complex64{1 + 2i, -3.5 + 0.25i, 1e30 - 1e-30i, 0}
	b := []complex64{0.5 - 2i, 3.5 + 1i, 1e30 + 1e-30i, -1i}
	c := []complex64{-1 + 1i, 0, -2e30, 7}
	dst := make([]complex64, len(a))
	ptrs := []unsafe.Pointer{unsafe.Pointer(&a[0]), unsafe.Pointer(&b[0]), unsafe.Pointer(&c[0])}
	generic.ComplexSum[complex64](unsafe.Pointer(&dst[0]), &ptrs[0], len(ptrs), len(dst))
	for i := range dst {
		if want := a[i] + b[i] + c[i]; dst[i] != want {
			t.Errorf("element %d: %v, want %v", i, dst[i], want)
		}
	}
}

// TestInPlaceLater checks the aliasing every kernel allows: dst is the
// last input, so the chunk must be read before it is written.
func TestInPlaceLater(t *testing.T) {
	const n = 700 // several chunks
	x, y := make([]int32, n), make([]int32, n)
	for i := range x {
		x[i], y[i] = int32(i), int32(3*i)
	}
	ptrs := []unsafe.Pointer{unsafe.Pointer(&x[0]), unsafe.Pointer(&y[0])}
	generic.IntSum[int32](unsafe.Pointer(&y[0]), &ptrs[0], 2, n)
	for i, v := range y {
		if v != int32(4*i) {
			t.Fatalf("element %d: %d, want %d", i, v, 4*i)
		}
	}
}

func TestNoAllocs(t *testing.T) {
	src := make([]byte, 4*1000)
	srcs := [][]byte{src, src, src}
	dst := make([]byte, len(src))
	var red kernel.Reducer
	for name, f := range map[string]kernel.Func{
		"IntSum": generic.IntSum[int32], "FloatMax": generic.FloatMax[float32], "HalfSum": generic.HalfSum[half.BFloat16],
	} {
		if a := testing.AllocsPerRun(20, func() { red.Run(f, dst, srcs, 1000) }); a != 0 {
			t.Errorf("%s allocates %v times per call", name, a)
		}
	}
}
