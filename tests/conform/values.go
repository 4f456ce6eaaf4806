package conform

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"

	"github.com/gocoll/gocoll/core"
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

// layout is how an element's bytes hold its value, from the dtype's
// registered descriptor: the runner never looks at a dtype's id.
type layout struct {
	class core.Class
	size  int  // bytes per element
	lane  int  // bytes per part: size, or size/2 for a complex element
	exp   uint // float exponent bits (float and complex)
	mant  uint // float mantissa bits
}

// floatish: the class rounds (float or complex).
func (l layout) floatish() bool { return l.class == core.ClassFloat || l.class == core.ClassComplex }

// layoutOf reads dt's layout from the registry.
func layoutOf(dt core.DType) (layout, error) {
	t := core.LookupType(dt)
	if t == nil {
		return layout{}, fmt.Errorf("conform: dtype %v is not registered: import the generated package that has it", dt)
	}
	l := layout{class: t.Class, size: t.Size, lane: t.Size, exp: uint(t.ExpBits), mant: uint(t.MantBits)}
	if t.Class == core.ClassComplex {
		l.lane = t.Size / 2
	}
	switch {
	case l.lane != 1 && l.lane != 2 && l.lane != 4 && l.lane != 8:
		return layout{}, fmt.Errorf("conform: dtype %v has %d-byte parts, which this runner cannot draw", t.Name, l.lane)
	case l.floatish() && (l.exp == 0 || l.mant == 0 || 1+int(l.exp+l.mant) != 8*l.lane):
		return layout{}, fmt.Errorf("conform: float dtype %v registers no usable layout (%d exponent, %d mantissa bits)", t.Name, l.exp, l.mant)
	case t.Class < core.ClassInt || t.Class > core.ClassComplex:
		return layout{}, fmt.Errorf("conform: dtype %v has class %v, which this runner does not know", t.Name, t.Class)
	}
	return l, nil
}

// opName is the registered name of op: the runner picks exact values by
// what the op computes, which only its name says.
func opName(op core.Op) string {
	if o := core.LookupOp(op); o != nil {
		return o.Name
	}
	return ""
}

// minMax reports whether op orders its inputs rather than combines them.
func minMax(op core.Op) bool { n := opName(op); return n == "min" || n == "max" }

// checkable reports whether a reference result exists for op on dt in
// pass p (see passRandom).
func checkable(dt core.DType, op core.Op, p pass) bool {
	if p == passExact || op == 0 {
		return true
	}
	l, _ := layoutOf(dt)
	return !l.floatish() || minMax(op)
}

// gen draws the inputs of one rank for one case: element i of the rank's
// input buffer is a pure function of (seed, i), so any rank can recompute
// any other rank's input without exchanging it. Drawing is on the hot path
// of every check, so each element costs a hash and a table lookup or a few
// bit operations; the choice among them is made once, in newGen.
type gen struct {
	l     layout
	size  int // element size
	mode  drawMode
	table []uint64 // modeTable: the element bits to pick from
}

type drawMode uint8

const (
	modeBits      drawMode = iota // any bits
	modeTable                     // one of table
	modeRandFloat                 // a finite float of moderate magnitude, random mantissa
	modeNoNaN                     // any bits but NaN's
)

func newGen(dt core.DType, op core.Op, p pass, nrank int) *gen {
	l, err := layoutOf(dt)
	g := &gen{l: l, size: l.size}
	if err != nil || g.size == 0 {
		return g // a collective without data; nothing is drawn
	}
	name := opName(op)
	switch {
	case p == passRandom && (op == 0 || !l.floatish()):
		g.mode = modeBits // any bits are exact for data movement and integer ops
	case !l.floatish() && name == "prod":
		g.mode, g.table = modeTable, g.values(prodFactors(nrank, false))
	case !l.floatish():
		g.mode = modeBits // wrap-around arithmetic is exact in any order
	case p == passRandom && minMax(op):
		g.mode = modeNoNaN
	case p == passRandom:
		g.mode = modeRandFloat
	default:
		g.mode, g.table = modeTable, g.values(exactFloats(name, nrank))
	}
	return g
}

// exactFloats are values for which op over nrank of them is exact in any
// order in every float dtype, bfloat16's 8-bit significand included.
func exactFloats(op string, nrank int) []float64 {
	var vs []float64
	switch op {
	case "prod":
		return prodFactors(nrank, true)
	case "sum", "avg":
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

// values encodes vs as the bits of one part of g's dtype (the whole
// element, or each half of a complex one).
func (g *gen) values(vs []float64) []uint64 {
	out := make([]uint64, len(vs))
	for i, v := range vs {
		if !g.l.floatish() {
			out[i] = uint64(int64(v))
			continue
		}
		out[i] = encodeFloat(v, g.l.exp, g.l.mant)
	}
	return out
}

// encodeFloat returns the bits of v in a binary float format of exp
// exponent and mant mantissa bits. v must be exact in that format (the
// runner's values are small integers, halves, signed zeros, infinities).
func encodeFloat(v float64, exp, mant uint) uint64 {
	b := math.Float64bits(v)
	sign := b >> 63 << (exp + mant)
	inf := (uint64(1)<<exp - 1) << mant
	switch {
	case math.IsInf(v, 0):
		return sign | inf
	case math.IsNaN(v):
		return sign | inf | 1<<(mant-1)
	case v == 0:
		return sign
	}
	frac, e := math.Frexp(math.Abs(v)) // |v| = frac * 2^e, frac in [0.5, 1)
	m := (frac*2 - 1) * math.Ldexp(1, int(mant))
	if m != math.Trunc(m) {
		panic(fmt.Sprintf("conform: %v is not exact with %d mantissa bits", v, mant))
	}
	bias := 1<<(exp-1) - 1
	return sign | uint64(e-1+bias)<<mant | uint64(m)
}

// decodeFloat is encodeFloat's inverse, for error messages.
func decodeFloat(u uint64, exp, mant uint) float64 {
	sign := 1.0
	if u>>(exp+mant)&1 == 1 {
		sign = -1
	}
	e := int(u >> mant & (1<<exp - 1))
	m := float64(u & (1<<mant - 1))
	bias := 1<<(exp-1) - 1
	switch e {
	case 0:
		return sign * math.Ldexp(m, 1-bias-int(mant))
	case 1<<exp - 1:
		if m != 0 {
			return math.NaN()
		}
		return math.Inf(int(sign))
	}
	return sign * math.Ldexp(1+m/math.Ldexp(1, int(mant)), e-bias)
}

// fillBatch is how many parts fill hashes before it draws and stores
// them: each step is then a tight loop the compiler keeps in registers.
const fillBatch = 256

// fill writes elements [first, first+len(dst)/size) of the input seeded by
// seed into dst, part by part. Part i's bits depend only on (seed, i).
func (g *gen) fill(dst []byte, seed uint64, first int) {
	lane := g.l.lane
	n := len(dst) / lane
	base := uint64(first * (g.size / lane))
	var buf [fillBatch]uint64
	for off := 0; off < n; off += fillBatch {
		h := buf[:min(fillBatch, n-off)]
		for i := range h {
			h[i] = partHash(seed, base+uint64(off+i))
		}
		g.draw(h)
		d := dst[off*lane : (off+len(h))*lane]
		switch lane {
		case 1:
			for i, v := range h {
				d[i] = byte(v)
			}
		case 2:
			for i, v := range h {
				binary.LittleEndian.PutUint16(d[2*i:], uint16(v))
			}
		case 4:
			for i, v := range h {
				binary.LittleEndian.PutUint32(d[4*i:], uint32(v))
			}
		case 8:
			for i, v := range h {
				binary.LittleEndian.PutUint64(d[8*i:], v)
			}
		}
	}
}

// draw turns each hash in h into the bits of one part (in the low lane*8
// bits), in place.
func (g *gen) draw(h []uint64) {
	switch g.mode {
	case modeTable:
		t, n := g.table, uint64(len(g.table))
		for i, v := range h {
			j, _ := bits.Mul64(v, n) // v scaled onto [0, n): no division
			h[i] = t[j]
		}
	case modeRandFloat:
		// sign, a random mantissa and an exponent in [-8, 8]: far from
		// overflow, but sums and products round.
		signAt, mant := uint(g.l.lane*8-1), g.l.mant
		bias := uint64(1)<<(g.l.exp-1) - 1 - 8
		mask := uint64(1)<<mant - 1
		for i, v := range h {
			h[i] = v>>63<<signAt | (bias+(v>>1)&15)<<mant | (v>>12)&mask
		}
	case modeNoNaN:
		mant := uint64(1)<<g.l.mant - 1
		exp := (uint64(1)<<g.l.exp - 1) << g.l.mant
		for i, v := range h {
			if v&exp == exp && v&mant != 0 {
				h[i] = v &^ mant // NaN becomes an infinity of the same sign
			}
		}
	}
}

// format renders the element at the start of b for an error message: its
// value and its bits.
func format(dt core.DType, b []byte) string {
	l, err := layoutOf(dt)
	if err != nil || len(b) < l.size {
		return fmt.Sprintf("%x", b)
	}
	part := func(p []byte) (uint64, string) {
		var u uint64
		for i := l.lane - 1; i >= 0; i-- {
			u = u<<8 | uint64(p[i])
		}
		switch l.class {
		case core.ClassInt:
			shift := 64 - 8*l.lane
			return u, fmt.Sprint(int64(u<<shift) >> shift)
		case core.ClassUint:
			return u, fmt.Sprint(u)
		}
		return u, fmt.Sprintf("%v (%#0*x)", decodeFloat(u, l.exp, l.mant), 2+2*l.lane, u)
	}
	if l.class == core.ClassComplex {
		_, re := part(b)
		_, im := part(b[l.lane:])
		return fmt.Sprintf("(%s, %s)", re, im)
	}
	_, s := part(b)
	return s
}

// seedFor mixes what identifies a rank's input for one case into a seed.
func seedFor(p pass, caseIdx, sizeIdx, variant, rank int) uint64 {
	h := uint64(0x9e3779b97f4a7c15)
	for _, v := range []int{int(p), caseIdx, sizeIdx, variant, rank} {
		h = mix(h ^ uint64(v))
	}
	return h
}

// partHash hashes part i of the input seeded by seed. It is on the hot path
// of every check (each rank recomputes every rank's input), so it is one
// 64x64->128-bit multiply folded to 64 bits (wyhash's mum), not mix.
func partHash(seed, i uint64) uint64 {
	hi, lo := bits.Mul64(seed^i*0xd6e8feb86659fd93, 0xe7037ed1a0b428db)
	return hi ^ lo
}

// mix is splitmix64's finalizer: a cheap, well-spread hash.
func mix(z uint64) uint64 {
	z += 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
