// Package half is gocoll's two 16-bit float types, bfloat16 and IEEE 754
// half precision, with their conversions to and from float32.
//
// The types live here once: every generated typed API aliases them
// (coll.BFloat16 is half.BFloat16), so a downstream spec's package and
// gocoll's own pass the same Go type. The conversions are the rounding
// rules the reduction kernels share bit for bit at every instruction-set
// level: bfloat16 rounds to nearest even with the integer formula and
// quiets NaN; float16 does exactly what x86's F16C VCVTPS2PH (rounding
// immediate 0) and VCVTPH2PS do, NaNs included.
package half

import (
	"math"
	"strconv"
)

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
