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
	for _, d := range coll.DTypes {
		if d.ID != dt {
			continue
		}
		switch d.Class {
		case "float":
			switch dt {
			case coll.DTypeFloat32, coll.DTypeFloat64, coll.DTypeBFloat16, coll.DTypeFloat16:
				return classFloat, nil
			}
		case "int":
			return classInt, nil
		case "uint":
			return classUint, nil
		}
		return 0, fmt.Errorf("conform: dtype %v (class %q) is unknown to this runner; update tests/conform/values.go", dt, d.Class)
	}
	return 0, fmt.Errorf("conform: dtype %v is not in coll.DTypes", dt)
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
// any other rank's input without exchanging it.
type gen struct {
	dt    core.DType
	op    core.Op
	cls   class
	size  int // element size
	pass  pass
	nrank int
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

// fill writes elements [first, first+len(dst)/size) of the input seeded by
// seed into dst.
func (g *gen) fill(dst []byte, seed uint64, first int) {
	n := len(dst) / g.size
	for i := range n {
		h := mix(seed ^ uint64(first+i)*0xd6e8feb86659fd93)
		g.put(dst[i*g.size:], h)
	}
}

func (g *gen) put(b []byte, h uint64) {
	if g.pass == passRandom && (g.op == 0 || g.cls != classFloat) {
		g.putBits(b, h) // any bits are exact for data movement and integer ops
		return
	}
	if g.cls != classFloat {
		if g.op == coll.OpProd {
			g.putInt(b, prodFactor(h, g.nrank, false))
			return
		}
		g.putBits(b, h) // wrap-around arithmetic is exact in any order
		return
	}
	if g.pass == passRandom {
		g.putFloat(b, randomFloat(h, g.op))
		return
	}
	g.putFloat(b, exactFloat(h, g.op, g.nrank))
}

// exactFloat returns a value for which op over nrank such values is exact
// in any order in every float dtype, bfloat16's 8-bit significand included.
func exactFloat(h uint64, op core.Op, nrank int) float64 {
	switch op {
	case coll.OpProd:
		return prodFactor(h, nrank, true)
	case coll.OpSum, coll.OpAvg:
		// Every partial sum stays within +-256, where bfloat16 still
		// holds every integer.
		r := max(1, 256/max(nrank, 1))
		return float64(int(h%uint64(2*r+1)) - r)
	default:
		// min, max and data movement: small integers and now and then a
		// signed zero or an infinity, which min and max must order right.
		switch h >> 58 {
		case 0:
			return math.Copysign(0, -1)
		case 1:
			return 0
		case 2:
			return math.Inf(1)
		case 3:
			return math.Inf(-1)
		}
		return float64(int(h%401) - 200)
	}
}

// prodFactor is mostly 1, sometimes 2 or -1 (and 0.5 for floats), so that a
// product over nrank ranks neither overflows nor degenerates to 0.
func prodFactor(h uint64, nrank int, float bool) float64 {
	if nrank > 14 { // 2^15 nears float16's limit: only signs then
		if h&1 == 0 {
			return 1
		}
		return -1
	}
	switch h % 16 {
	case 12, 13:
		return 2
	case 14:
		return -1
	case 15:
		if float {
			return 0.5
		}
		return 3
	}
	return 1
}

// randomFloat draws a value whose sum and product over a few ranks depend on
// the order but stay finite; for min and max any non-NaN value will do.
func randomFloat(h uint64, op core.Op) float64 {
	if op == coll.OpMin || op == coll.OpMax {
		f := math.Float64frombits(h)
		if math.IsNaN(f) {
			return math.Inf(int(h>>63)*-2 + 1)
		}
		return f
	}
	// A 1.x mantissa of random bits times a power of two in [2^-8, 2^8]:
	// far from overflow, but sums and products round.
	m := 1 + float64(h>>12)/(1<<52)
	e := int(h>>1&15) - 8
	if h&1 == 1 {
		m = -m
	}
	return math.Ldexp(m, e)
}

func (g *gen) putBits(b []byte, h uint64) {
	switch g.size {
	case 1:
		b[0] = byte(h)
	case 2:
		binary.LittleEndian.PutUint16(b, uint16(h))
	case 4:
		binary.LittleEndian.PutUint32(b, uint32(h))
	case 8:
		binary.LittleEndian.PutUint64(b, h)
	}
}

func (g *gen) putInt(b []byte, v float64) { g.putBits(b, uint64(int64(v))) }

func (g *gen) putFloat(b []byte, v float64) {
	switch g.dt {
	case coll.DTypeFloat32:
		binary.LittleEndian.PutUint32(b, math.Float32bits(float32(v)))
	case coll.DTypeFloat64:
		binary.LittleEndian.PutUint64(b, math.Float64bits(v))
	case coll.DTypeBFloat16:
		binary.LittleEndian.PutUint16(b, uint16(coll.BFloat16FromFloat32(float32(v))))
	case coll.DTypeFloat16:
		binary.LittleEndian.PutUint16(b, uint16(coll.Float16FromFloat32(float32(v))))
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
