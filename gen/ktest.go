package gen

import (
	"fmt"
	"strings"

	"github.com/gocoll/gocoll/gen/spec"
)

// kind is how the kernel tests name a dtype's storage: its Go type, with
// the 16-bit floats in lower case.
func kind(d spec.DType) string { return strings.ToLower(d.Go) }

// kernelsTestTable is the generated part of the kernel tests: the spec's
// dtypes and ops, and for each dtype a check that its typed Reduce agrees
// with the byte API.
func kernelsTestTable(s *spec.Spec) string {
	var b strings.Builder
	b.WriteString("// testTypes is the spec's dtypes and ops, for the table-driven tests.\nvar testTypes = []testType{\n")
	for _, d := range s.DTypes {
		fmt.Fprintf(&b, "\t{dt: %s, name: %q, size: %d, kind: %q, ops: []testOp{\n", kdt(d), d.Name, d.Size, kind(d))
		for _, on := range d.Ops {
			o, _ := s.Op(on)
			fmt.Fprintf(&b, "\t\t{op: %s, name: %q, reducesAs: %q, divide: %v},\n", kop(o), o.Name, reducesAs(s, o).Name, o.Finish == "divide")
		}
		b.WriteString("\t}},\n")
	}
	b.WriteString("}\n")
	for _, d := range s.DTypes {
		o, _ := s.Op(d.Ops[0])
		fmt.Fprintf(&b, `
// TestReduce%[1]sTyped checks that the typed API agrees with the byte API.
func TestReduce%[1]sTyped(t *testing.T) {
	r := rand.New(rand.NewPCG(%[4]d, 1))
	const n = 37
	srcs := make([][]%[2]s, 3)
	byteSrcs := make([][]byte, 3)
	for i := range srcs {
		srcs[i] = make([]%[2]s, n)
		byteSrcs[i] = unsafe.Slice((*byte)(unsafe.Pointer(&srcs[i][0])), n*%[5]d)
		fill(r, testTypeOf(%[3]s), byteSrcs[i])
	}
	dst := make([]%[2]s, n)
	want := make([]byte, n*%[5]d)
	if err := Reduce(%[3]s, %[6]s, want, byteSrcs); err != nil {
		t.Fatal(err)
	}
	if err := Reduce%[1]s(%[6]s, dst, srcs); err != nil {
		t.Fatal(err)
	}
	if got := unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), n*%[5]d); !bytes.Equal(got, want) {
		t.Fatalf("Reduce%[1]s = %%x, Reduce = %%x", got, want)
	}
	if err := Reduce%[1]s(%[6]s, dst, srcs[:0]); err == nil {
		t.Fatal("Reduce%[1]s with no sources: no error")
	}
}
`, d.Title(), d.Go, kdt(d), d.ID, d.Size, kop(o))
	}
	return b.String()
}

// kernelsTest is the kernels package's test file.
func kernelsTest(s *spec.Spec) string {
	hasBF16, hasF16 := false, false
	for _, d := range s.DTypes {
		hasBF16 = hasBF16 || d.Go == "BFloat16"
		hasF16 = hasF16 || d.Go == "Float16"
	}
	imports := []string{`"bytes"`, `"encoding/binary"`, `"errors"`, `"fmt"`, `"math"`, `"math/big"`, `"math/rand/v2"`, `"os"`, `"os/exec"`, `"strings"`, `"testing"`, `"unsafe"`, `"github.com/gocoll/gocoll/core"`}
	if hasF16 {
		imports = append(imports, `"github.com/x448/float16"`)
	}
	src := "// " + Header(s) + "\n\npackage kernels\n\nimport (\n\t" + strings.Join(imports, "\n\t") + "\n)\n\n" + kernelsTestTable(s) + kernelsTestStatic
	// The 16-bit oracles exist only for the dtypes the spec has.
	if hasBF16 {
		src += `
func widenBF16(h uint16) float32 {
	if h&0x7fff > 0x7f80 {
		return math.Float32frombits(uint32(h) << 16) // NaN: the payload as it is
	}
	return float32(bf16Value(h))
}
func roundBF16(f float32) uint16 {
	if f != f {
		return uint16(math.Float32bits(f)>>16) | 0x0040
	}
	return bf16Oracle(f)
}
`
	} else {
		src += "\nfunc widenBF16(uint16) float32 { panic(\"no bfloat16 in this spec\") }\nfunc roundBF16(float32) uint16 { panic(\"no bfloat16 in this spec\") }\n"
	}
	if hasF16 {
		src += `
func widenF16(h uint16) float32 { return float16.Frombits(h).Float32() }
func roundF16(f float32) uint16 { return float16.Fromfloat32(f).Bits() }
`
	} else {
		src += "\nfunc widenF16(uint16) float32 { panic(\"no float16 in this spec\") }\nfunc roundF16(float32) uint16 { panic(\"no float16 in this spec\") }\n"
	}
	return src
}

const kernelsTestStatic = `
type testType struct {
	dt   core.DType
	name string
	size int
	kind string // float32, float64, bfloat16, float16, int8, uint8, ..., uint64
	ops  []testOp
}

type testOp struct {
	op        core.Op
	name      string
	reducesAs string // the op the kernel computes (avg: sum)
	divide    bool   // Finish divides by the number of ranks
}

func testTypeOf(dt core.DType) testType {
	for _, tt := range testTypes {
		if tt.dt == dt {
			return tt
		}
	}
	panic(fmt.Sprint("no test type for ", dt))
}

// levels is every ISA level this CPU has.
func levels() []ISA {
	var l []ISA
	for i := Generic; i <= Detect(); i++ {
		l = append(l, i)
	}
	return l
}

// withISA runs f at level isa and restores the level after.
func withISA(t *testing.T, isa ISA, f func()) {
	t.Helper()
	old := Active()
	if err := SetISA(isa); err != nil {
		t.Fatal(err)
	}
	defer SetISA(old)
	f()
}

func isFloat(kind string) bool { return strings.HasPrefix(kind, "float") || kind == "bfloat16" }

// specials are the values every float test mixes in, as bits of each width.
var specials = map[string][]uint64{
	"float32": {0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0x7fa00000, 0xffc12345,
		1, 0x807fffff, 0x00800000, 0x7f7fffff, 0xff7fffff, 0x3f800000, 0xbf800000, 0x3f800001, 0x33800000},
	"float64": {0, 1 << 63, 0x7ff0000000000000, 0xfff0000000000000, 0x7ff8000000000000, 0xfff8000000000000,
		0x7ff0000000000001, 0x7ff4000000000000, 0xfff8000012345678, 1, 0x800fffffffffffff, 0x0010000000000000,
		0x7fefffffffffffff, 0x3ff0000000000000, 0xbff0000000000000, 0x3ff0000000000001},
	"bfloat16": {0, 0x8000, 0x7f80, 0xff80, 0x7fc0, 0xffc0, 0x7f81, 0x7fa0, 0xffc5, 1, 0x807f, 0x0080, 0x7f7f, 0xff7f, 0x3f80, 0xbf80, 0x3f81},
	"float16":  {0, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0xfe00, 0x7c01, 0x7d00, 0xfe45, 1, 0x83ff, 0x0400, 0x7bff, 0xfbff, 0x3c00, 0xbc00, 0x3c01},
}

// randomBits returns an element of kind: mostly moderate values whose sums
// and products round, some raw bit patterns (huge, tiny, NaN), some
// specials; integers are raw bits (wrap-around) and extremes.
func randomBits(r *rand.Rand, kind string) uint64 {
	p := r.IntN(100)
	switch kind {
	case "float32", "bfloat16":
		if p < 4 {
			sp := specials[kind]
			return sp[r.IntN(len(sp))]
		}
		var b uint32
		if p < 20 {
			b = r.Uint32()
		} else {
			b = math.Float32bits(float32(math.Ldexp(r.Float64()*2-1, r.IntN(12)-4)))
		}
		if kind == "bfloat16" {
			return uint64(b >> 16)
		}
		return uint64(b)
	case "float16":
		if p < 4 {
			sp := specials[kind]
			return sp[r.IntN(len(sp))]
		}
		if p < 20 {
			return uint64(r.Uint32() & 0xffff)
		}
		return uint64(roundF16(float32(math.Ldexp(r.Float64()*2-1, r.IntN(8)-3))))
	case "float64":
		if p < 4 {
			sp := specials[kind]
			return sp[r.IntN(len(sp))]
		}
		if p < 20 {
			return r.Uint64()
		}
		return math.Float64bits(math.Ldexp(r.Float64()*2-1, r.IntN(12)-4))
	}
	if p < 5 {
		// Extremes: 0, all ones, the sign bit alone, the largest positive.
		return []uint64{0, math.MaxUint64, 1 << 63, 1<<63 - 1, 1}[r.IntN(5)]
	}
	return r.Uint64()
}

// fill writes random elements of tt into buf.
func fill(r *rand.Rand, tt testType, buf []byte) {
	for i := 0; i+tt.size <= len(buf); i += tt.size {
		putElem(buf[i:], tt, randomBits(r, tt.kind))
	}
}

func putElem(b []byte, tt testType, v uint64) {
	switch tt.size {
	case 1:
		b[0] = byte(v)
	case 2:
		binary.NativeEndian.PutUint16(b, uint16(v))
	case 4:
		binary.NativeEndian.PutUint32(b, uint32(v))
	case 8:
		binary.NativeEndian.PutUint64(b, v)
	}
}

func getElem(b []byte, tt testType) uint64 {
	switch tt.size {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(binary.NativeEndian.Uint16(b))
	case 4:
		return uint64(binary.NativeEndian.Uint32(b))
	}
	return binary.NativeEndian.Uint64(b)
}

// The oracle: an element-wise reduction written independently of the
// kernels: float32 arithmetic done in float64 and rounded once (exact for
// +, * and / of float32s, since float64 has more than twice the bits), the
// x86 NaN rule spelled out, 16-bit floats converted by x448/float16 and
// math/big.

// x86NaN is the NaN x86 returns for a op b when the result is NaN.
func x86NaN32(a, b float32) float32 {
	switch {
	case a != a:
		return math.Float32frombits(math.Float32bits(a) | 0x400000)
	case b != b:
		return math.Float32frombits(math.Float32bits(b) | 0x400000)
	}
	return math.Float32frombits(0xffc00000)
}

func x86NaN64(a, b float64) float64 {
	switch {
	case a != a:
		return math.Float64frombits(math.Float64bits(a) | 1<<51)
	case b != b:
		return math.Float64frombits(math.Float64bits(b) | 1<<51)
	}
	return math.Float64frombits(0xfff8000000000000)
}

func oracle32(op string, a, b float32) float32 {
	if a != a || b != b {
		return x86NaN32(a, b)
	}
	var r float64
	switch op {
	case "sum":
		r = float64(a) + float64(b)
	case "prod":
		r = float64(a) * float64(b)
	case "min", "max":
		switch {
		case a == b:
			if op == "min" {
				return math.Float32frombits(math.Float32bits(a) | math.Float32bits(b))
			}
			return math.Float32frombits(math.Float32bits(a) & math.Float32bits(b))
		case (a < b) == (op == "min"):
			return a
		}
		return b
	}
	if r != r { // Inf - Inf, 0 * Inf
		return math.Float32frombits(0xffc00000)
	}
	return float32(r)
}

func oracle64(op string, a, b float64) float64 {
	if a != a || b != b {
		return x86NaN64(a, b)
	}
	var r float64
	switch op {
	case "sum":
		r = a + b
	case "prod":
		r = a * b
	case "min", "max":
		switch {
		case a == b:
			if op == "min" {
				return math.Float64frombits(math.Float64bits(a) | math.Float64bits(b))
			}
			return math.Float64frombits(math.Float64bits(a) & math.Float64bits(b))
		case (a < b) == (op == "min"):
			return a
		}
		return b
	}
	if r != r {
		return math.Float64frombits(0xfff8000000000000)
	}
	return r
}

// oracleInt folds integers of width bits as Go's sized types do: compute
// in uint64 and keep the low bits (two's complement), compare by sign for
// signed kinds.
func oracleInt(kind, op string, a, b uint64) uint64 {
	bits := map[string]uint{"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64}[kind]
	mask := uint64(1)<<bits - 1
	if bits == 64 {
		mask = math.MaxUint64
	}
	signed := !strings.HasPrefix(kind, "u")
	sext := func(v uint64) int64 { return int64(v<<(64-bits)) >> (64 - bits) }
	less := func(x, y uint64) bool {
		if signed {
			return sext(x) < sext(y)
		}
		return x < y
	}
	var r uint64
	switch op {
	case "sum":
		r = a + b
	case "prod":
		r = a * b
	case "min":
		r = a
		if less(b, a) {
			r = b
		}
	case "max":
		r = a
		if less(a, b) {
			r = b
		}
	case "band":
		r = a & b
	case "bor":
		r = a | b
	case "bxor":
		r = a ^ b
	default:
		panic("oracle: no op " + op)
	}
	return r & mask
}

// oracleElem reduces one element position.
func oracleElem(tt testType, op string, xs []uint64) uint64 {
	switch tt.kind {
	case "float64":
		acc := math.Float64frombits(xs[0])
		for _, x := range xs[1:] {
			acc = oracle64(op, acc, math.Float64frombits(x))
		}
		return math.Float64bits(acc)
	case "float32", "bfloat16", "float16":
		widen := func(x uint64) float32 { return math.Float32frombits(uint32(x)) }
		round := func(f float32) uint64 { return uint64(math.Float32bits(f)) }
		if tt.kind == "bfloat16" {
			widen = func(x uint64) float32 { return widenBF16(uint16(x)) }
			round = func(f float32) uint64 { return uint64(roundBF16(f)) }
		} else if tt.kind == "float16" {
			widen = func(x uint64) float32 { return widenF16(uint16(x)) }
			round = func(f float32) uint64 { return uint64(roundF16(f)) }
		}
		acc := widen(xs[0])
		for _, x := range xs[1:] {
			acc = oracle32(op, acc, widen(x))
		}
		return round(acc)
	}
	acc := xs[0]
	for _, x := range xs[1:] {
		acc = oracleInt(tt.kind, op, acc, x)
	}
	return acc
}

// callGeneric runs the pure-Go kernel of tt x op directly.
func callGeneric(t *testing.T, tt testType, op core.Op, dst []byte, srcs [][]byte) {
	t.Helper()
	for _, ks := range kernelSpecs {
		if ks.dt == tt.dt && ks.op == op {
			if len(dst) == 0 {
				return
			}
			run(ks.generic, dst, srcs, len(dst)/tt.size, nil)
			return
		}
	}
	t.Fatalf("no kernel spec for %s %v", tt.name, op)
}

// TestGenericMatchesOracle checks the pure-Go kernels, the reference the
// assembly is held to, against the independent oracle: random inputs for
// n = 1..16, and every pair of special values.
func TestGenericMatchesOracle(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for _, tt := range testTypes {
		for _, to := range tt.ops {
			t.Run(tt.name+"/"+to.name, func(t *testing.T) {
				check := func(srcs [][]byte, what string) {
					t.Helper()
					dst := make([]byte, len(srcs[0]))
					callGeneric(t, tt, to.op, dst, srcs)
					xs := make([]uint64, len(srcs))
					for i := 0; i < len(dst); i += tt.size {
						for k, s := range srcs {
							xs[k] = getElem(s[i:], tt)
						}
						want := oracleElem(tt, to.reducesAs, xs)
						if got := getElem(dst[i:], tt); got != want {
							t.Fatalf("%s: element %d: inputs %#x: got %#x, want %#x", what, i/tt.size, xs, got, want)
						}
					}
				}
				for n := 1; n <= 16; n++ {
					srcs := make([][]byte, n)
					for k := range srcs {
						srcs[k] = make([]byte, 61*tt.size)
						fill(r, tt, srcs[k])
					}
					check(srcs, fmt.Sprintf("n=%d", n))
				}
				sp := specials[tt.kind]
				if sp == nil {
					sp = []uint64{0, 1, 2, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 1<<31 - 1, 1 << 31, 1<<32 - 1, 1<<63 - 1, 1 << 63, math.MaxUint64}
				}
				a, b := make([]byte, len(sp)*len(sp)*tt.size), make([]byte, len(sp)*len(sp)*tt.size)
				for i, x := range sp {
					for j, y := range sp {
						putElem(a[(i*len(sp)+j)*tt.size:], tt, x)
						putElem(b[(i*len(sp)+j)*tt.size:], tt, y)
					}
				}
				check([][]byte{a, b}, "special pairs")
			})
		}
	}
}

// TestReduceMatchesGeneric checks every dtype x op at every ISA level this
// CPU has against the pure-Go kernels, bit for bit: lengths 0..300 and
// large ones, n = 1..16 inputs (and 17 and 33), starts at every alignment,
// dst in place, and guard bytes around dst that must stay untouched.
// -short trims the cases (for the AVX-512 emulator).
func TestReduceMatchesGeneric(t *testing.T) {
	ns := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	var lengths []int
	for l := 0; l <= 300; l++ {
		lengths = append(lengths, l)
	}
	// Large lengths, each with the input counts it runs with.
	const big1, big2 = 1<<18 + 13, 1<<16 + 3
	large := map[int][]int{big1: {2}, big2: {2, 9}}
	if testing.Short() {
		ns = []int{1, 2, 3, 5, 16}
		lengths = lengths[:131]
		lengths = append(lengths, 255, 256, 257, 300)
		large = nil
	}
	const guard = 64
	for _, tt := range testTypes {
		// One pool of inputs per type, sliced at varying offsets: the first
		// two long enough for big1, the next seven for big2.
		r := rand.New(rand.NewPCG(uint64(tt.dt), 5))
		pool := make([][]byte, 33)
		for k := range pool {
			l := 300
			if large != nil && k < 2 {
				l = big1
			} else if large != nil && k < 9 {
				l = big2
			}
			pool[k] = make([]byte, (l+64)*tt.size)
			fill(r, tt, pool[k])
		}
		for _, isa := range levels() {
			for _, to := range tt.ops {
				t.Run(fmt.Sprintf("%s/%s/%s", isa, tt.name, to.name), func(t *testing.T) {
					withISA(t, isa, func() {
						for _, n := range ns {
							for _, l := range lengths {
								runCase(t, r, tt, to, pool, n, l, guard)
							}
						}
						// More inputs than the pointer pool holds.
						for _, n := range []int{17, 33} {
							for l := 0; l < 70; l += 3 {
								runCase(t, r, tt, to, pool, n, l, guard)
							}
						}
						for _, l := range []int{big1, big2} {
							for _, n := range large[l] {
								runCase(t, r, tt, to, pool, n, l, guard)
							}
						}
					})
				})
			}
		}
	}
}

func runCase(t *testing.T, r *rand.Rand, tt testType, to testOp, pool [][]byte, n, l, guard int) {
	t.Helper()
	nb := l * tt.size
	srcs := make([][]byte, n)
	for k := range srcs {
		off := r.IntN(64)
		srcs[k] = pool[k][off : off+nb : off+nb]
	}
	want := make([]byte, nb)
	callGeneric(t, tt, to.op, want, srcs)

	// dst inside a buffer with guard bytes on both sides, at any alignment.
	off := r.IntN(guard)
	buf := make([]byte, off+nb+guard)
	for i := range buf {
		buf[i] = byte(0xa5 ^ i)
	}
	dst := buf[off : off+nb : off+nb]
	inPlace := n > 1 && r.IntN(5) == 0
	if inPlace {
		k := r.IntN(n)
		copy(dst, srcs[k])
		srcs[k] = dst
	}
	// Half the cases go through a Reducer, whose scratch replaces the pool.
	reduce := Reduce
	if r.IntN(2) == 0 {
		reduce = new(Reducer).Reduce
	}
	if err := reduce(tt.dt, to.op, dst, srcs); err != nil {
		t.Fatalf("n=%d len=%d: %v", n, l, err)
	}
	if !bytes.Equal(dst, want) {
		for i := 0; i < nb; i += tt.size {
			if g, w := getElem(dst[i:], tt), getElem(want[i:], tt); g != w {
				xs := make([]uint64, n)
				for k := range srcs {
					xs[k] = getElem(srcs[k][i:], tt)
				}
				t.Fatalf("n=%d len=%d in-place=%v: element %d: got %#x, want %#x (inputs %#x)", n, l, inPlace, i/tt.size, g, w, xs)
			}
		}
	}
	for i := range buf {
		if (i < off || i >= off+nb) && buf[i] != byte(0xa5^i) {
			t.Fatalf("n=%d len=%d: byte %d outside dst (dst is [%d, %d)) changed", n, l, i, off, off+nb)
		}
	}
}

// TestFinish checks the avg finish step against the oracle: every element
// divided once, 16-bit floats in float32 and rounded once.
func TestFinish(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 11))
	for _, tt := range testTypes {
		for _, to := range tt.ops {
			buf := make([]byte, 257*tt.size)
			fill(r, tt, buf)
			for nranks := 1; nranks <= 9; nranks++ {
				orig := append([]byte(nil), buf...)
				if err := Finish(tt.dt, to.op, buf, nranks); err != nil {
					t.Fatal(err)
				}
				for i := 0; i < len(buf); i += tt.size {
					x := getElem(orig[i:], tt)
					want := x
					if to.divide {
						want = oracleDivide(tt, x, nranks)
					}
					if got := getElem(buf[i:], tt); got != want {
						t.Fatalf("%s %s nranks=%d: %#x -> %#x, want %#x", tt.name, to.name, nranks, x, got, want)
					}
				}
				copy(buf, orig)
			}
			if to.divide && Finish(tt.dt, to.op, buf, 0) == nil {
				t.Fatalf("%s %s: Finish with 0 ranks: no error", tt.name, to.name)
			}
		}
	}
}

// oracleDivide divides with math/big: the exact quotient (to 300 bits),
// rounded once to the accumulator type.
func oracleDivide(tt testType, x uint64, nranks int) uint64 {
	quo := func(f float64) *big.Float {
		return new(big.Float).SetPrec(300).Quo(new(big.Float).SetPrec(300).SetFloat64(f), new(big.Float).SetInt64(int64(nranks)))
	}
	switch tt.kind {
	case "float64":
		f := math.Float64frombits(x)
		if f != f {
			return x | 1<<51
		}
		if math.IsInf(f, 0) {
			return x
		}
		q, _ := quo(f).Float64()
		return math.Float64bits(q)
	case "float32", "bfloat16", "float16":
		var f float32
		switch tt.kind {
		case "float32":
			f = math.Float32frombits(uint32(x))
		case "bfloat16":
			f = widenBF16(uint16(x))
		case "float16":
			f = widenF16(uint16(x))
		}
		var q float32
		switch {
		case f != f:
			q = math.Float32frombits(math.Float32bits(f) | 0x400000)
		case math.IsInf(float64(f), 0):
			q = f
		default:
			q, _ = quo(float64(f)).Float32()
			if q == 0 && math.Signbit(float64(f)) {
				q = float32(math.Copysign(0, -1))
			}
		}
		switch tt.kind {
		case "bfloat16":
			return uint64(roundBF16(q))
		case "float16":
			return uint64(roundF16(q))
		}
		return uint64(math.Float32bits(q))
	}
	panic("divide of " + tt.kind)
}

func TestReduceErrors(t *testing.T) {
	tt := testTypes[0]
	op := tt.ops[0].op
	b := func(n int) []byte { return make([]byte, n*tt.size) }
	if err := Reduce(tt.dt, 0, b(4), [][]byte{b(4)}); !errors.Is(err, core.ErrUnsupported) {
		t.Errorf("op 0: %v, want ErrUnsupported", err)
	}
	if err := Reduce(0, op, b(4), [][]byte{b(4)}); !errors.Is(err, core.ErrUnsupported) {
		t.Errorf("dtype 0: %v, want ErrUnsupported", err)
	}
	if err := Reduce(tt.dt, op, b(4), nil); err == nil {
		t.Error("no sources: no error")
	}
	if err := Reduce(tt.dt, op, b(4), [][]byte{b(4), b(3)}); err == nil {
		t.Error("short source: no error")
	}
	if tt.size > 1 {
		if err := Reduce(tt.dt, op, make([]byte, tt.size+1), [][]byte{make([]byte, tt.size+1)}); err == nil {
			t.Error("partial element: no error")
		}
	}
	whole := b(8)
	if err := Reduce(tt.dt, op, whole[:4*tt.size], [][]byte{whole[tt.size : 5*tt.size]}); err == nil {
		t.Error("partial overlap: no error")
	}
	if err := Reduce(tt.dt, op, whole[:4*tt.size], [][]byte{whole[:4*tt.size]}); err != nil {
		t.Errorf("in place: %v", err)
	}
	for _, tt := range testTypes {
		for _, to := range tt.ops {
			if !Supports(tt.dt, to.op) {
				t.Errorf("Supports(%s, %s) = false", tt.name, to.name)
			}
		}
	}
}

// TestReduceNoAllocs checks that the byte API, with or without a Reducer,
// allocates nothing for up to 16 inputs.
func TestReduceNoAllocs(t *testing.T) {
	tt := testTypes[0]
	srcs := make([][]byte, 16)
	for i := range srcs {
		srcs[i] = make([]byte, 64*tt.size)
	}
	dst := make([]byte, 64*tt.size)
	if a := testing.AllocsPerRun(100, func() { Reduce(tt.dt, tt.ops[0].op, dst, srcs) }); a != 0 {
		t.Errorf("Reduce allocates %v times per call", a)
	}
	var red Reducer
	if a := testing.AllocsPerRun(100, func() { red.Reduce(tt.dt, tt.ops[0].op, dst, srcs) }); a != 0 {
		t.Errorf("Reducer.Reduce allocates %v times per call", a)
	}
}

func TestSetISA(t *testing.T) {
	old := Active()
	defer SetISA(old)
	for _, l := range levels() {
		if err := SetISA(l); err != nil || Active() != l {
			t.Errorf("SetISA(%s) = %v, Active() = %s", l, err, Active())
		}
	}
	if Detect() < AVX512 {
		if err := SetISA(Detect() + 1); err == nil || Active() != Detect() {
			t.Errorf("SetISA(%s) on a CPU that lacks it: %v, Active() = %s", Detect()+1, err, Active())
		}
	}
	for _, s := range []string{"generic", "avx2", "AVX512"} {
		if _, err := ParseISA(s); err != nil {
			t.Errorf("ParseISA(%q): %v", s, err)
		}
	}
	if _, err := ParseISA("sse9"); err == nil {
		t.Error(` + "`" + `ParseISA("sse9"): no error` + "`" + `)
	}
}

// TestEnvISA runs this test binary again with GOCOLL_ISA set and checks
// what the child reports.
func TestEnvISA(t *testing.T) {
	if os.Getenv("KERNELS_TEST_ENV_CHILD") != "" {
		fmt.Printf("active=%s err=%v\n", Active(), CheckEnv())
		return
	}
	bad := "avx512"
	if Detect() == AVX512 {
		bad = "bogus"
	}
	cases := []struct{ env, want string }{
		{"generic", "active=generic err=<nil>"},
		{bad, "active=" + Detect().String() + " err=GOCOLL_ISA="},
		{"bogus", "active=" + Detect().String() + " err=GOCOLL_ISA=\"bogus\""},
	}
	// os.Executable, not os.Args[0]: the AVX-512 emulator starts the binary
	// by a path that is not valid inside its guest.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		cmd := exec.Command(self, "-test.run=^TestEnvISA$", "-test.count=1")
		cmd.Env = append(os.Environ(), "KERNELS_TEST_ENV_CHILD=1", EnvISA+"="+c.env)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child with %s=%s: %v\n%s", EnvISA, c.env, err, out)
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("child with %s=%s printed %q, want it to contain %q", EnvISA, c.env, out, c.want)
		}
	}
}
`

// kernelsBench is the kernels package's benchmarks: float32 and bfloat16
// sum (whichever the spec has) at n = 2, 4, 8 inputs, 16 KiB and 64 MiB per
// buffer, per ISA level, beside copy() of the same bytes.
func kernelsBench(s *spec.Spec) string {
	var dts []string
	for _, d := range s.DTypes {
		if (d.Go == "float32" || d.Go == "BFloat16") && d.Supports("sum") {
			dts = append(dts, kdt(d))
		}
	}
	sum, _ := s.Op("sum")
	if len(dts) == 0 || sum.Name == "" {
		return "// " + Header(s) + "\n\npackage kernels\n\n// The spec has neither float32 nor bfloat16 sum: nothing to benchmark.\n"
	}
	return "// " + Header(s) + `

package kernels

import (
	"fmt"
	"testing"

	"github.com/gocoll/gocoll/core"
)

var benchDTypes = []core.DType{` + strings.Join(dts, ", ") + `}

var benchSizes = []struct {
	name  string
	bytes int
}{{"16KiB", 16 << 10}, {"64MiB", 64 << 20}}

// BenchmarkReduce reports GB/s over every byte read and written: n inputs
// and one output of the buffer size. -short skips 64 MiB.
func BenchmarkReduce(b *testing.B) {
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
			for _, dt := range benchDTypes {
				for _, isa := range levels() {
					b.Run(fmt.Sprintf("%s/sum/n=%d/%s/%s", dtName(dt), n, sz.name, isa), func(b *testing.B) {
						old := Active()
						if err := SetISA(isa); err != nil {
							b.Fatal(err)
						}
						defer SetISA(old)
						b.SetBytes(int64((n + 1) * sz.bytes))
						for b.Loop() {
							if err := Reduce(dt, ` + kop(sum) + `, dst, srcs); err != nil {
								b.Fatal(err)
							}
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

// BenchmarkCopy is Go's copy() of one buffer, counting bytes read and
// written, for comparison with BenchmarkReduce.
func BenchmarkCopy(b *testing.B) {
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
`
}
