package kerneltest

import (
	"encoding/binary"
	"math"
	"math/big"
	"math/rand/v2"
	"strings"

	"github.com/gocoll/gocoll/half"
)

// elem is how the tests see an element type: lanes of one scalar kind
// (complex64 is two float32 lanes), each drawn and checked on its own.
type elem struct {
	size  int    // bytes per element
	lane  string // scalar kind of each lane: float32, float64, bfloat16, float16, int8, ..., uint64
	lsize int    // bytes per lane
}

// elems are the element types the tests know, by the name a spec's go:
// gives them.
var elems = map[string]elem{
	"float32":   {4, "float32", 4},
	"float64":   {8, "float64", 8},
	"BFloat16":  {2, "bfloat16", 2},
	"Float16":   {2, "float16", 2},
	"int8":      {1, "int8", 1},
	"uint8":     {1, "uint8", 1},
	"int16":     {2, "int16", 2},
	"uint16":    {2, "uint16", 2},
	"int32":     {4, "int32", 4},
	"uint32":    {4, "uint32", 4},
	"int64":     {8, "int64", 8},
	"uint64":    {8, "uint64", 8},
	"complex64": {8, "float32", 4},
}

func isFloat(lane string) bool { return strings.HasPrefix(lane, "float") || lane == "bfloat16" }

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

// intSpecials are the integer values the special-pair tests combine.
var intSpecials = []uint64{0, 1, 2, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 1<<31 - 1, 1 << 31, 1<<32 - 1, 1<<63 - 1, 1 << 63, math.MaxUint64}

// randomBits returns a lane of kind lane: mostly moderate values whose
// sums and products round, some raw bit patterns (huge, tiny, NaN), some
// specials; integers are raw bits (wrap-around) and extremes.
func randomBits(r *rand.Rand, lane string) uint64 {
	p := r.IntN(100)
	switch lane {
	case "float32", "bfloat16":
		if p < 4 {
			sp := specials[lane]
			return sp[r.IntN(len(sp))]
		}
		var b uint32
		if p < 20 {
			b = r.Uint32()
		} else {
			b = math.Float32bits(float32(math.Ldexp(r.Float64()*2-1, r.IntN(12)-4)))
		}
		if lane == "bfloat16" {
			return uint64(b >> 16)
		}
		return uint64(b)
	case "float16":
		if p < 4 {
			sp := specials[lane]
			return sp[r.IntN(len(sp))]
		}
		if p < 20 {
			return uint64(r.Uint32() & 0xffff)
		}
		return uint64(half.Float16FromFloat32(float32(math.Ldexp(r.Float64()*2-1, r.IntN(8)-3))))
	case "float64":
		if p < 4 {
			sp := specials[lane]
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

// fill writes random lanes of e into buf.
func fill(r *rand.Rand, e elem, buf []byte) {
	for i := 0; i+e.lsize <= len(buf); i += e.lsize {
		putLane(buf[i:], e.lsize, randomBits(r, e.lane))
	}
}

func putLane(b []byte, size int, v uint64) {
	switch size {
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

func getLane(b []byte, size int) uint64 {
	switch size {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(binary.NativeEndian.Uint16(b))
	case 4:
		return uint64(binary.NativeEndian.Uint32(b))
	}
	return binary.NativeEndian.Uint64(b)
}

// The oracle is an element-wise reduction written independently of the
// kernels: float32 arithmetic done in float64 and rounded once (exact for
// +, * and / of float32s, since float64 has more than twice the bits), the
// x86 NaN rule spelled out, division done in math/big. 16-bit floats are
// converted by package half, whose own tests check every conversion
// against independent ones (math/big, x448/float16); kerneltest itself
// needs no module beyond gocoll's, so a downstream module can run it.

// x86NaN32 is the NaN x86 returns for a op b when the result is NaN.
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
	default:
		panic("kerneltest: no float oracle for op " + op)
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
	default:
		panic("kerneltest: no float oracle for op " + op)
	}
	if r != r {
		return math.Float64frombits(0xfff8000000000000)
	}
	return r
}

// oracleInt folds integers of kind lane as Go's sized types do: compute in
// uint64 and keep the low bits (two's complement), compare by sign for
// signed kinds.
func oracleInt(lane, op string, a, b uint64) uint64 {
	bits := map[string]uint{"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64}[lane]
	mask := uint64(1)<<bits - 1
	if bits == 64 {
		mask = math.MaxUint64
	}
	signed := !strings.HasPrefix(lane, "u")
	sext := func(v uint64) int64 { return int64(v<<(64-bits)) >> (64 - bits) }
	less := func(x, y uint64) bool {
		if signed {
			return sext(x) < sext(y)
		}
		return x&mask < y&mask
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
		panic("kerneltest: no integer oracle for op " + op)
	}
	return r & mask
}

func widenBF16(h uint64) float32 { return half.BFloat16(h).Float32() }
func roundBF16(f float32) uint64 { return uint64(half.BFloat16FromFloat32(f)) }
func widenF16(h uint64) float32  { return half.Float16(h).Float32() }
func roundF16(f float32) uint64  { return uint64(half.Float16FromFloat32(f)) }

// oracleLane reduces one lane position: xs are the inputs' bits, in order.
func oracleLane(lane, op string, xs []uint64) uint64 {
	switch lane {
	case "float64":
		acc := math.Float64frombits(xs[0])
		for _, x := range xs[1:] {
			acc = oracle64(op, acc, math.Float64frombits(x))
		}
		return math.Float64bits(acc)
	case "float32", "bfloat16", "float16":
		widen := func(x uint64) float32 { return math.Float32frombits(uint32(x)) }
		round := func(f float32) uint64 { return uint64(math.Float32bits(f)) }
		if lane == "bfloat16" {
			widen, round = widenBF16, roundBF16
		} else if lane == "float16" {
			widen, round = widenF16, roundF16
		}
		acc := widen(xs[0])
		for _, x := range xs[1:] {
			acc = oracle32(op, acc, widen(x))
		}
		return round(acc)
	}
	acc := xs[0]
	for _, x := range xs[1:] {
		acc = oracleInt(lane, op, acc, x)
	}
	return acc
}

// oracleDivide divides one lane by nranks with math/big: the exact
// quotient (to 300 bits), rounded once to the accumulator type.
func oracleDivide(lane string, x uint64, nranks int) uint64 {
	quo := func(f float64) *big.Float {
		return new(big.Float).SetPrec(300).Quo(new(big.Float).SetPrec(300).SetFloat64(f), new(big.Float).SetInt64(int64(nranks)))
	}
	switch lane {
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
		switch lane {
		case "float32":
			f = math.Float32frombits(uint32(x))
		case "bfloat16":
			f = widenBF16(x)
		case "float16":
			f = widenF16(x)
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
		switch lane {
		case "bfloat16":
			return roundBF16(q)
		case "float16":
			return roundF16(q)
		}
		return uint64(math.Float32bits(q))
	}
	panic("kerneltest: no divide for " + lane)
}
