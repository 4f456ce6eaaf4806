package half

import "fmt"

// The bulk conversions convert whole slices with the widest vector
// instructions the CPU has and package kernel's level allows (AVX-512,
// AVX2 with F16C, or none; see kernel.Active and GOCOLL_ISA), and give
// exactly the element conversions' bits at every level: BFloat16sFromFloat32s
// is a loop of BFloat16FromFloat32, only faster.
//
// Each converts every element of src into the same index of dst, and
// panics, writing nothing, if dst is shorter than src. dst and src must not
// share memory.

// BFloat16sFromFloat32s sets dst[i] = BFloat16FromFloat32(src[i]) for every
// i < len(src): round to nearest even, NaN kept (made quiet), values beyond
// the largest bfloat16 ±Inf. Where the CPU has AVX512_BF16 it uses
// VCVTNE2PS2BF16, except on blocks with float32 subnormals, which that
// instruction reads as zero.
func BFloat16sFromFloat32s(dst []BFloat16, src []float32) {
	check("BFloat16sFromFloat32s", len(dst), len(src))
	for i := bf16FromF32Arch(dst, src); i < len(src); i++ {
		dst[i] = BFloat16FromFloat32(src[i])
	}
}

// Float32sFromBFloat16s sets dst[i] = src[i].Float32() for every
// i < len(src), which is exact.
func Float32sFromBFloat16s(dst []float32, src []BFloat16) {
	check("Float32sFromBFloat16s", len(dst), len(src))
	for i := f32FromBF16Arch(dst, src); i < len(src); i++ {
		dst[i] = src[i].Float32()
	}
}

// Float16sFromFloat32s sets dst[i] = Float16FromFloat32(src[i]) for every
// i < len(src): round to nearest even as x86's VCVTPS2PH does, subnormals
// kept, NaN kept (made quiet), values beyond the largest float16 ±Inf.
func Float16sFromFloat32s(dst []Float16, src []float32) {
	check("Float16sFromFloat32s", len(dst), len(src))
	for i := f16FromF32Arch(dst, src); i < len(src); i++ {
		dst[i] = Float16FromFloat32(src[i])
	}
}

// Float32sFromFloat16s sets dst[i] = src[i].Float32() for every
// i < len(src), which is exact (NaN made quiet).
func Float32sFromFloat16s(dst []float32, src []Float16) {
	check("Float32sFromFloat16s", len(dst), len(src))
	for i := f32FromF16Arch(dst, src); i < len(src); i++ {
		dst[i] = src[i].Float32()
	}
}

func check(fn string, ndst, nsrc int) {
	if ndst < nsrc {
		panic(fmt.Sprintf("half.%s: dst has %d elements, src %d: pass a dst at least as long as src", fn, ndst, nsrc))
	}
}
