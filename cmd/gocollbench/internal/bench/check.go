package bench

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/x448/float16"
)

// The -check data. Every value a rank sends, and every value a correct
// collective produces from them, is a small integer (or a power of two for
// prod) that every dtype represents exactly, so the reference is exact and a
// result is right only if it matches bit for bit, whatever order a backend
// reduces in. The reference is computed here in float64 or int64, apart
// from the kernels under test.

// class is how a dtype's bits read.
type class int

const (
	classFloat class = iota
	classInt
	classUint
)

// dtypeCodec knows how to write an exact value into a dtype's bytes.
type dtypeCodec struct {
	name  string
	size  int
	class class
}

// codecFor returns the codec of a spec dtype name, or an error for a dtype
// -check does not know (a downstream spec's own type).
func codecFor(name string) (dtypeCodec, error) {
	switch name {
	case "float32":
		return dtypeCodec{name, 4, classFloat}, nil
	case "float64":
		return dtypeCodec{name, 8, classFloat}, nil
	case "bfloat16", "float16":
		return dtypeCodec{name, 2, classFloat}, nil
	case "int8":
		return dtypeCodec{name, 1, classInt}, nil
	case "uint8":
		return dtypeCodec{name, 1, classUint}, nil
	case "int32":
		return dtypeCodec{name, 4, classInt}, nil
	case "uint32":
		return dtypeCodec{name, 4, classUint}, nil
	case "int64":
		return dtypeCodec{name, 8, classInt}, nil
	case "uint64":
		return dtypeCodec{name, 8, classUint}, nil
	}
	return dtypeCodec{}, fmt.Errorf("-check does not know dtype %q; run without -check", name)
}

// put writes v, an integer-valued number the dtype holds exactly (floats)
// or any integer (integers wrap to the dtype's width as Go conversions do),
// as element i of buf.
func (c dtypeCodec) put(buf []byte, i int, v float64) {
	b := buf[i*c.size : (i+1)*c.size]
	switch c.name {
	case "float32":
		binary.LittleEndian.PutUint32(b, math.Float32bits(float32(v)))
	case "float64":
		binary.LittleEndian.PutUint64(b, math.Float64bits(v))
	case "bfloat16":
		// Exact values only: the low half of the float32 is zero.
		binary.LittleEndian.PutUint16(b, uint16(math.Float32bits(float32(v))>>16))
	case "float16":
		binary.LittleEndian.PutUint16(b, float16.Fromfloat32(float32(v)).Bits())
	default:
		u := uint64(int64(v)) // two's complement; truncation below wraps
		switch c.size {
		case 1:
			b[0] = byte(u)
		case 4:
			binary.LittleEndian.PutUint32(b, uint32(u))
		case 8:
			binary.LittleEndian.PutUint64(b, u)
		}
	}
}

// pattern is the data of one benchmark case: what rank r sends at element
// i of its send buffer.
type pattern struct {
	codec dtypeCodec
	op    string // "" for collectives without a reduce op
	n     int    // ranks
}

// value is rank r's element i. For reductions the values keep every
// partial result exact: sum, avg, min, max and the bitwise ops get
// a(i) + 2r - (n-1) (the per-rank offsets cancel over the ranks, so avg is
// a(i) exactly), shifted to be non-negative for unsigned types and bitwise
// ops; prod gets 1, 2 or -1, so products are powers of two up to 2^n. Other
// collectives get (17r + 5i) mod 101, distinct enough across ranks and
// blocks that a misplaced block shows.
func (p pattern) value(r, i int) float64 {
	switch p.op {
	case "":
		return float64((17*r + 5*i) % 101)
	case "prod":
		switch {
		case (i+r)%5 == 0:
			return 2
		case p.codec.class != classUint && (i+3*r)%3 == 1:
			return -1
		}
		return 1
	}
	a := (5*i + i/11) % 11
	v := a + 2*r - (p.n - 1)
	if p.codec.class == classUint || p.op == "band" || p.op == "bor" || p.op == "bxor" {
		v += p.n - 1
	}
	return float64(v)
}

// reduced is the reference reduction over all ranks of element i.
func (p pattern) reduced(i int) float64 {
	acc := p.value(0, i)
	for r := 1; r < p.n; r++ {
		v := p.value(r, i)
		switch p.op {
		case "sum", "avg":
			acc += v
		case "prod":
			acc *= v
		case "min":
			acc = math.Min(acc, v)
		case "max":
			acc = math.Max(acc, v)
		case "band":
			acc = float64(int64(acc) & int64(v))
		case "bor":
			acc = float64(int64(acc) | int64(v))
		case "bxor":
			acc = float64(int64(acc) ^ int64(v))
		}
	}
	if p.op == "avg" {
		acc /= float64(p.n) // exact: the offsets cancel, the sum is n*a(i)
	}
	return acc
}

// sentinel fills a result buffer before the checked call, so an element a
// backend never writes shows as wrong. 0xA5 bytes are no value the patterns
// produce in any dtype (a non-integer float, 165 or -91 as bytes, ...).
const sentinel = 0xA5

func fillSentinel(b []byte) {
	for i := range b {
		b[i] = sentinel
	}
}

// fill writes rank r's pattern into buf (count elements).
func (p pattern) fill(buf []byte, r, count int) {
	for i := 0; i < count; i++ {
		p.codec.put(buf, i, p.value(r, i))
	}
}

// countWrong compares got with want element by element, bit for bit, and
// returns how many elements differ.
func countWrong(size int, got, want []byte) int64 {
	var wrong int64
	for i := 0; i+size <= len(want); i += size {
		if i+size > len(got) || string(got[i:i+size]) != string(want[i:i+size]) {
			wrong++
		}
	}
	return wrong
}
