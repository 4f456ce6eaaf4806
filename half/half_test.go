package half

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"

	"github.com/x448/float16"
)

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

func TestBitsAndString(t *testing.T) {
	for _, c := range []struct {
		h    interface{ Bits() uint16 }
		bits uint16
		str  string
	}{
		{BFloat16FromFloat32(1.5), 0x3fc0, "1.5"},
		{BFloat16FromFloat32(-0.0078125), 0xbc00, "-0.0078125"},
		{Float16FromFloat32(1.5), 0x3e00, "1.5"},
		{Float16FromFloat32(65504), 0x7bff, "65504"},
	} {
		if got := c.h.Bits(); got != c.bits {
			t.Errorf("%v.Bits() = %#04x, want %#04x", c.h, got, c.bits)
		}
		if got := c.h.(interface{ String() string }).String(); got != c.str {
			t.Errorf("String() of %#04x = %q, want %q", c.bits, got, c.str)
		}
	}
}
