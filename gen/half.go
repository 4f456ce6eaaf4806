package gen

import (
	"strings"

	"github.com/gocoll/gocoll/gen/spec"
)

// halfDTypes returns the spec's 16-bit float dtypes.
func halfDTypes(s *spec.Spec) []spec.DType {
	var out []spec.DType
	for _, d := range s.DTypes {
		if d.Half() {
			out = append(out, d)
		}
	}
	return out
}

// halfCode is each 16-bit float type with its conversions. The rounding
// rules are the contract shared bit for bit with the assembly kernels:
// bfloat16 rounds to nearest even with the integer formula, NaN made quiet;
// float16 does what x86's F16C VCVTPS2PH (imm 0) and VCVTPH2PS do, NaNs
// included.
var halfCode = map[string]string{
	"BFloat16": `
// BFloat16 is a bfloat16 number (1 sign bit, 8 exponent bits, 7 mantissa
// bits: float32's top half), kept as its bits.
type BFloat16 uint16

// BFloat16FromFloat32 rounds f to the nearest bfloat16, ties to even. NaN
// stays NaN (made quiet); values beyond the largest bfloat16 become ±Inf.
func BFloat16FromFloat32(f float32) BFloat16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		// NaN: keep sign and top payload, set the quiet bit so that
		// truncating the payload cannot make it Inf.
		return BFloat16(uint16(b>>16) | 0x0040)
	}
	return BFloat16(uint16((b + 0x7fff + ((b >> 16) & 1)) >> 16))
}

// Float32 returns h exactly as a float32.
func (h BFloat16) Float32() float32 { return math.Float32frombits(uint32(h) << 16) }

// Bits returns h's bits.
func (h BFloat16) Bits() uint16 { return uint16(h) }

// String formats h as its float32 value.
func (h BFloat16) String() string { return strconv.FormatFloat(float64(h.Float32()), 'g', -1, 32) }
`,
	"Float16": `
// Float16 is an IEEE 754 half-precision number (1 sign bit, 5 exponent bits,
// 10 mantissa bits), kept as its bits.
type Float16 uint16

// Float16FromFloat32 rounds f to the nearest float16, ties to even, exactly
// as x86's VCVTPS2PH does: values beyond the largest float16 become ±Inf,
// tiny ones become subnormals or ±0, NaN keeps its sign and top payload
// bits and is made quiet.
func Float16FromFloat32(f float32) Float16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	man := b & 0x7fffff
	if exp == 0xff {
		if man != 0 {
			return Float16(sign | 0x7e00 | uint16(man>>13))
		}
		return Float16(sign | 0x7c00)
	}
	e := exp - 127 + 15 // float16 biased exponent
	if e >= 0x1f {
		return Float16(sign | 0x7c00)
	}
	if e <= 0 {
		// Subnormal or zero: the result counts units of 2^-24.
		if e < -10 {
			return Float16(sign) // below half the smallest subnormal
		}
		m := man | 0x800000
		shift := uint(14 - e)
		h := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && h&1 == 1) {
			h++ // may carry into the smallest normal, which is right
		}
		return Float16(sign | uint16(h))
	}
	h := uint32(e)<<10 | man>>13
	rem := man & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // may carry into the exponent, up to Inf, which is right
	}
	return Float16(sign | uint16(h))
}

// Float32 returns h exactly as a float32, as VCVTPH2PS does (NaN made quiet).
func (h Float16) Float32() float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f && man != 0:
		return math.Float32frombits(sign | 0x7fc00000 | man<<13)
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000)
	case exp == 0 && man == 0:
		return math.Float32frombits(sign)
	case exp == 0:
		// Subnormal: normalise into float32's wider exponent range.
		e := uint32(113)
		for man&0x400 == 0 {
			man <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (man&0x3ff)<<13)
	}
	return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
}

// Bits returns h's bits.
func (h Float16) Bits() uint16 { return uint16(h) }

// String formats h as its float32 value.
func (h Float16) String() string { return strconv.FormatFloat(float64(h.Float32()), 'g', -1, 32) }
`,
}

// halfTypes is the Go source of the spec's 16-bit float types for package
// pkg, or "" when the spec has none.
func halfTypes(s *spec.Spec, pkg string, _ bool) string {
	hs := halfDTypes(s)
	if len(hs) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("// " + Header(s) + "\n\npackage " + pkg + "\n\nimport (\n\t\"math\"\n\t\"strconv\"\n)\n")
	for _, d := range hs {
		b.WriteString(halfCode[d.Go])
	}
	return b.String()
}

// halfTestCode tests each 16-bit type against independent oracles.
var halfTestCode = map[string]string{
	"BFloat16": `
// bf16Oracle rounds f to bfloat16 with math/big (nearest even at 8
// significant bits, or at 2^-133 below the normal range), independently of
// the integer formula the package uses. NaN is handled by the caller.
func bf16Oracle(f float32) uint16 {
	sign := uint16(0)
	if math.Signbit(float64(f)) {
		sign = 0x8000
	}
	a := math.Abs(float64(f))
	if math.IsInf(a, 0) {
		return sign | 0x7f80
	}
	var r float32
	if a < 0x1p-126 {
		r = float32(math.RoundToEven(a*0x1p133) * 0x1p-133)
	} else {
		bf := new(big.Float).SetMode(big.ToNearestEven).SetPrec(8).SetFloat64(a)
		r, _ = bf.Float32() // beyond MaxFloat32 this is +Inf, as it must be
	}
	return sign | uint16(math.Float32bits(r)>>16)
}

// bf16Value decodes h from its fields, independently of the shift the
// package uses.
func bf16Value(h uint16) float64 {
	e := int(h>>7) & 0xff
	m := float64(h & 0x7f)
	var v float64
	switch e {
	case 0xff:
		if m != 0 {
			return math.NaN()
		}
		v = math.Inf(1)
	case 0:
		v = math.Ldexp(m, -133)
	default:
		v = math.Ldexp(128+m, e-134)
	}
	if h&0x8000 != 0 {
		v = -v
	}
	return v
}

func TestBFloat16RoundTripAll(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := BFloat16(i)
		f := h.Float32()
		if want := bf16Value(uint16(i)); !math.IsNaN(want) && float64(f) != want {
			t.Fatalf("BFloat16(%#04x).Float32() = %v, want %v", i, f, want)
		}
		if isNaN := i&0x7fff > 0x7f80; isNaN != (f != f) || math.Signbit(float64(f)) != (i&0x8000 != 0) {
			t.Fatalf("BFloat16(%#04x).Float32() = %#08x: wrong class or sign", i, math.Float32bits(f))
		}
		back := BFloat16FromFloat32(f)
		want := h
		if i&0x7fff > 0x7f80 {
			want |= 0x0040 // NaN comes back quiet
		}
		if back != want {
			t.Fatalf("BFloat16FromFloat32(BFloat16(%#04x).Float32()) = %#04x, want %#04x", i, uint16(back), uint16(want))
		}
	}
}

func checkBF16(t *testing.T, f float32) {
	t.Helper()
	got := uint16(BFloat16FromFloat32(f))
	var want uint16
	if f != f {
		want = uint16(math.Float32bits(f)>>16) | 0x0040
	} else {
		want = bf16Oracle(f)
	}
	if got != want {
		t.Fatalf("BFloat16FromFloat32(%g = %#08x) = %#04x, want %#04x", f, math.Float32bits(f), got, want)
	}
}

func TestBFloat16RoundingHalfway(t *testing.T) {
	// Every float32 exactly between two adjacent bfloat16 values, and its
	// float32 neighbours on either side.
	for i := 0; i < 1<<16; i++ {
		if i&0x7fff >= 0x7f80 {
			continue
		}
		mid := uint32(i)<<16 | 0x8000
		for _, b := range []uint32{mid - 1, mid, mid + 1} {
			checkBF16(t, math.Float32frombits(b))
		}
	}
}

func TestBFloat16RoundingRandom(t *testing.T) {
	n := 2000000
	if testing.Short() {
		n = 200000
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range n {
		checkBF16(t, math.Float32frombits(r.Uint32()))
	}
	for _, f := range []float32{0, float32(math.Copysign(0, -1)), 1, -1, math.MaxFloat32, -math.MaxFloat32, 0x1p-149, 0x1p-126, float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN())} {
		checkBF16(t, f)
	}
}
`,
	"Float16": `
func TestFloat16RoundTripAll(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := Float16(i)
		f := h.Float32()
		if want := float16.Frombits(uint16(i)).Float32(); math.Float32bits(f) != math.Float32bits(want) {
			t.Fatalf("Float16(%#04x).Float32() = %#08x, want %#08x", i, math.Float32bits(f), math.Float32bits(want))
		}
		back := Float16FromFloat32(f)
		want := h
		if i&0x7fff > 0x7c00 {
			want |= 0x0200 // NaN comes back quiet
		}
		if back != want {
			t.Fatalf("Float16FromFloat32(Float16(%#04x).Float32()) = %#04x, want %#04x", i, uint16(back), uint16(want))
		}
	}
}

func checkF16(t *testing.T, f float32) {
	t.Helper()
	got := uint16(Float16FromFloat32(f))
	// x448/float16 rounds exactly as F16C does, NaNs included.
	if want := float16.Fromfloat32(f).Bits(); got != want {
		t.Fatalf("Float16FromFloat32(%g = %#08x) = %#04x, want %#04x", f, math.Float32bits(f), got, want)
	}
}

func TestFloat16RoundingHalfway(t *testing.T) {
	// Every float32 exactly between two adjacent float16 values (subnormals
	// included), and its float32 neighbours on either side.
	for i := 0; i < 1<<16; i++ {
		if i&0x7fff >= 0x7c00 {
			continue
		}
		lo := float64(float16.Frombits(uint16(i)).Float32())
		hi := float64(float16.Frombits(uint16(i + 1)).Float32())
		if i&0x7fff == 0x7bff {
			hi = math.Copysign(65536, lo) // the value one ulp past the largest
		}
		mid := math.Float32bits(float32((lo + hi) / 2))
		for _, b := range []uint32{mid - 1, mid, mid + 1} {
			checkF16(t, math.Float32frombits(b))
		}
	}
}

func TestFloat16RoundingRandom(t *testing.T) {
	n := 2000000
	if testing.Short() {
		n = 200000
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range n {
		checkF16(t, math.Float32frombits(r.Uint32()))
	}
	for _, f := range []float32{0, float32(math.Copysign(0, -1)), 1, -1, 65504, 65519.99, 65520, math.MaxFloat32, 0x1p-24, 0x1p-25, 0x1.8p-25, 0x1p-149, float32(math.Inf(1)), float32(math.NaN())} {
		checkF16(t, f)
	}
}
`,
}

// halfTest is the test file for the 16-bit types of package pkg.
func halfTest(s *spec.Spec, pkg string) string {
	var b strings.Builder
	hs := halfDTypes(s)
	imports := []string{`"math"`, `"math/rand/v2"`, `"testing"`}
	for _, d := range hs {
		if d.Go == "BFloat16" {
			imports = append(imports, `"math/big"`)
		}
		if d.Go == "Float16" {
			imports = append(imports, `"github.com/x448/float16"`)
		}
	}
	b.WriteString("// " + Header(s) + "\n\npackage " + pkg + "\n\nimport (\n\t" + strings.Join(imports, "\n\t") + "\n)\n")
	for _, d := range hs {
		b.WriteString(halfTestCode[d.Go])
	}
	return b.String()
}
