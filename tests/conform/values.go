package conform

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// pass selects how inputs are drawn.
type pass uint8

const (
	// passExact draws values for which every op is exact in any order
	// (small integers; for prod mostly 1s), so each output has exactly one
	// right answer whatever order the backend reduces in.
	passExact pass = iota
	// passRandom draws random bits. Data movement must carry them bit for
	// bit (NaN payloads included); integer ops and float min/max are still
	// exact in any order (NaNs are left out of reductions, where two
	// payloads would make the order visible). Float sum, prod and avg depend
	// on the order: for them only the ranks' agreement is checked.
	passRandom
)

func (p pass) String() string {
	if p == passExact {
		return "exact"
	}
	return "random"
}

type class uint8

const (
	classFloat class = iota
	classInt
	classUint
)

// dtypeClass says how to draw values of dt, from the spec's dtype table.
func dtypeClass(dt core.DType) (class, error) {
	t := core.LookupType(dt)
	if t == nil {
		return 0, fmt.Errorf("conform: dtype %v is not registered", dt)
	}
	switch dt {
	case coll.DTypeFloat32, coll.DTypeFloat64, coll.DTypeBFloat16, coll.DTypeFloat16:
		return classFloat, nil
	case coll.DTypeInt8, coll.DTypeInt32, coll.DTypeInt64:
		return classInt, nil
	case coll.DTypeUint8, coll.DTypeUint32, coll.DTypeUint64:
		return classUint, nil
	}
	return 0, fmt.Errorf("conform: dtype %v is unknown to this runner; update tests/conform/values.go", t.Name)
}

// checkable reports whether a reference result exists for op on dt in
// pass p (see passRandom).
func checkable(dt core.DType, op core.Op, p pass) bool {
	if p == passExact || op == 0 {
		return true
	}
	c, _ := dtypeClass(dt)
	return c != classFloat || op == coll.OpMin || op == coll.OpMax
}

// gen draws the inputs of one rank for one case: element i of the rank's
// input buffer is a pure function of (seed, i), so any rank can recompute
// any other rank's input without exchanging it. Drawing is on the hot path
// of every check, so each element costs a hash and a table lookup or a few
// bit operations; the choice among them is made once, in newGen.
type gen struct {
	dt    core.DType
	op    core.Op
	size  int // element size
	mode  drawMode
	table []uint64 // modeTable: the element bits to pick from
	// The float layout, for modeRandFloat and modeNoNaN.
	mantBits, expBits uint
}

type drawMode uint8

const (
	modeBits      drawMode = iota // any bits
	modeTable                     // one of table
	modeRandFloat                 // a finite float of moderate magnitude, random mantissa
	modeNoNaN                     // any bits but NaN's
)

func newGen(dt core.DType, op core.Op, p pass, nrank int) *gen {
	g := &gen{dt: dt, op: op, size: dt.Size()}
	cls, err := dtypeClass(dt)
	if err != nil || g.size == 0 {
		return g // a collective without data; nothing is drawn
	}
	switch dt {
	case coll.DTypeFloat32:
		g.expBits, g.mantBits = 8, 23
	case coll.DTypeFloat64:
		g.expBits, g.mantBits = 11, 52
	case coll.DTypeBFloat16:
		g.expBits, g.mantBits = 8, 7
	case coll.DTypeFloat16:
		g.expBits, g.mantBits = 5, 10
	}
	switch {
	case p == passRandom && (op == 0 || cls != classFloat):
		g.mode = modeBits // any bits are exact for data movement and integer ops
	case cls != classFloat && op == coll.OpProd:
		g.mode, g.table = modeTable, g.values(prodFactors(nrank, false))
	case cls != classFloat:
		g.mode = modeBits // wrap-around arithmetic is exact in any order
	case p == passRandom && (op == coll.OpMin || op == coll.OpMax):
		g.mode = modeNoNaN
	case p == passRandom:
		g.mode = modeRandFloat
	default:
		g.mode, g.table = modeTable, g.values(exactFloats(op, nrank))
	}
	return g
}

// exactFloats are values for which op over nrank of them is exact in any
// order in every float dtype, bfloat16's 8-bit significand included.
func exactFloats(op core.Op, nrank int) []float64 {
	var vs []float64
	switch op {
	case coll.OpProd:
		return prodFactors(nrank, true)
	case coll.OpSum, coll.OpAvg:
		// Every partial sum stays within +-256, where bfloat16 still
		// holds every integer.
		r := max(1, 256/max(nrank, 1))
		for v := -r; v <= r; v++ {
			vs = append(vs, float64(v))
		}
	default:
		// min, max and data movement: small integers and now and then a
		// signed zero or an infinity, which min and max must order right.
		for v := -200; v <= 200; v++ {
			vs = append(vs, float64(v))
		}
		vs = append(vs, math.Copysign(0, -1), math.Inf(1), math.Inf(-1))
	}
	return vs
}

// prodFactors is mostly 1s, some 2s and -1s (and 0.5 or 3), so that a
// product over nrank ranks neither overflows nor degenerates to 0.
func prodFactors(nrank int, float bool) []float64 {
	if nrank > 14 { // 2^15 nears float16's limit: only signs then
		return []float64{1, 1, 1, -1}
	}
	last := 3.0
	if float {
		last = 0.5
	}
	return []float64{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, -1, last}
}

// values encodes vs as element bits of g's dtype.
func (g *gen) values(vs []float64) []uint64 {
	out := make([]uint64, len(vs))
	cls, _ := dtypeClass(g.dt)
	for i, v := range vs {
		if cls != classFloat {
			out[i] = uint64(int64(v))
			continue
		}
		switch g.dt {
		case coll.DTypeFloat32:
			out[i] = uint64(math.Float32bits(float32(v)))
		case coll.DTypeFloat64:
			out[i] = math.Float64bits(v)
		case coll.DTypeBFloat16:
			out[i] = uint64(coll.BFloat16FromFloat32(float32(v)))
		case coll.DTypeFloat16:
			out[i] = uint64(coll.Float16FromFloat32(float32(v)))
		}
	}
	return out
}

// draw turns a hash into element bits (in the low size*8 bits).
func (g *gen) draw(h uint64) uint64 {
	switch g.mode {
	case modeTable:
		return g.table[h%uint64(len(g.table))]
	case modeRandFloat:
		// sign, a random mantissa and an exponent in [-8, 8]: far from
		// overflow, but sums and products round.
		sign := h >> 63 << (g.size*8 - 1)
		exp := uint64(1)<<(g.expBits-1) - 1 + (h>>1)&15 - 8
		return sign | exp<<g.mantBits | (h>>12)&(1<<g.mantBits-1)
	case modeNoNaN:
		mant := uint64(1)<<g.mantBits - 1
		exp := (uint64(1)<<g.expBits - 1) << g.mantBits
		if h&exp == exp && h&mant != 0 {
			h &^= mant // NaN becomes an infinity of the same sign
		}
	}
	return h
}

// fill writes elements [first, first+len(dst)/size) of the input seeded by
// seed into dst.
func (g *gen) fill(dst []byte, seed uint64, first int) {
	n := len(dst) / g.size
	key := func(i int) uint64 { return mix(seed ^ uint64(first+i)*0xd6e8feb86659fd93) }
	switch g.size {
	case 1:
		for i := range n {
			dst[i] = byte(g.draw(key(i)))
		}
	case 2:
		for i := range n {
			binary.LittleEndian.PutUint16(dst[2*i:], uint16(g.draw(key(i))))
		}
	case 4:
		for i := range n {
			binary.LittleEndian.PutUint32(dst[4*i:], uint32(g.draw(key(i))))
		}
	case 8:
		for i := range n {
			binary.LittleEndian.PutUint64(dst[8*i:], g.draw(key(i)))
		}
	}
}

// format renders element i of b for an error message: its value and its bits.
func format(dt core.DType, b []byte) string {
	switch dt {
	case coll.DTypeFloat32:
		u := binary.LittleEndian.Uint32(b)
		return fmt.Sprintf("%v (%#08x)", math.Float32frombits(u), u)
	case coll.DTypeFloat64:
		u := binary.LittleEndian.Uint64(b)
		return fmt.Sprintf("%v (%#016x)", math.Float64frombits(u), u)
	case coll.DTypeBFloat16:
		u := binary.LittleEndian.Uint16(b)
		return fmt.Sprintf("%v (%#04x)", coll.BFloat16(u).Float32(), u)
	case coll.DTypeFloat16:
		u := binary.LittleEndian.Uint16(b)
		return fmt.Sprintf("%v (%#04x)", coll.Float16(u).Float32(), u)
	case coll.DTypeInt8:
		return fmt.Sprint(int8(b[0]))
	case coll.DTypeUint8:
		return fmt.Sprint(b[0])
	case coll.DTypeInt32:
		return fmt.Sprint(int32(binary.LittleEndian.Uint32(b)))
	case coll.DTypeUint32:
		return fmt.Sprint(binary.LittleEndian.Uint32(b))
	case coll.DTypeInt64:
		return fmt.Sprint(int64(binary.LittleEndian.Uint64(b)))
	case coll.DTypeUint64:
		return fmt.Sprint(binary.LittleEndian.Uint64(b))
	}
	return fmt.Sprintf("%x", b)
}

// seedFor mixes what identifies a rank's input for one case into a seed.
func seedFor(p pass, caseIdx, sizeIdx, variant, rank int) uint64 {
	h := uint64(0x9e3779b97f4a7c15)
	for _, v := range []int{int(p), caseIdx, sizeIdx, variant, rank} {
		h = mix(h ^ uint64(v))
	}
	return h
}

// mix is splitmix64's finalizer: a cheap, well-spread hash.
func mix(z uint64) uint64 {
	z += 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
