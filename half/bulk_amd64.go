//go:build !purego

package half

import (
	"unsafe"

	"github.com/gocoll/gocoll/kernel"
	"github.com/klauspost/cpuid/v2"
)

// useBF16 says whether bf16FromF32Arch uses VCVTNE2PS2BF16 at the AVX512
// level: where the CPU has AVX512_BF16. Tests turn it off to reach the
// AVX-512 integer loop on such CPUs.
var useBF16 = hasBF16()

// hasBF16 reports whether the CPU has AVX512_BF16.
func hasBF16() bool { return cpuid.CPU.Supports(cpuid.AVX512BF16) }

// Each xFromYArch converts the longest prefix of src its assembly loops
// take at the active level, a whole number of their vectors, and returns
// its length; the caller converts the rest element by element.

func bf16FromF32Arch(dst []BFloat16, src []float32) int {
	n := len(src)
	done := 0
	switch kernel.Active() {
	case kernel.AVX512:
		if useBF16 {
			for blocks := n &^ 31; done < blocks; {
				done += bf16FromF32AVX512BF16(unsafe.Pointer(&dst[done]), unsafe.Pointer(&src[done]), blocks-done)
				if done < blocks {
					// A block with a subnormal: the integer formula keeps it.
					bf16FromF32AVX512(unsafe.Pointer(&dst[done]), unsafe.Pointer(&src[done]), 32)
					done += 32
				}
			}
		}
		if m := (n - done) &^ 15; m > 0 {
			bf16FromF32AVX512(unsafe.Pointer(&dst[done]), unsafe.Pointer(&src[done]), m)
			done += m
		}
	case kernel.AVX2:
		if m := n &^ 15; m > 0 {
			bf16FromF32AVX2(unsafe.Pointer(&dst[0]), unsafe.Pointer(&src[0]), m)
			done = m
		}
	}
	return done
}

func f32FromBF16Arch(dst []float32, src []BFloat16) int {
	return run(unsafe.Pointer(unsafe.SliceData(dst)), unsafe.Pointer(unsafe.SliceData(src)), len(src), f32FromBF16AVX512, f32FromBF16AVX2)
}

func f16FromF32Arch(dst []Float16, src []float32) int {
	return run(unsafe.Pointer(unsafe.SliceData(dst)), unsafe.Pointer(unsafe.SliceData(src)), len(src), f16FromF32AVX512, f16FromF32AVX2)
}

func f32FromF16Arch(dst []float32, src []Float16) int {
	return run(unsafe.Pointer(unsafe.SliceData(dst)), unsafe.Pointer(unsafe.SliceData(src)), len(src), f32FromF16AVX512, f32FromF16AVX2)
}

// run converts the longest prefix of n elements that the active level's
// loop takes (16 elements per AVX-512 vector, 8 per AVX2 vector) and
// returns its length.
func run(dst, src unsafe.Pointer, n int, at512, at2 func(dst, src unsafe.Pointer, n int)) int {
	var m int
	switch kernel.Active() {
	case kernel.AVX512:
		m = n &^ 15
		if m > 0 {
			at512(dst, src, m)
		}
	case kernel.AVX2:
		m = n &^ 7
		if m > 0 {
			at2(dst, src, m)
		}
	}
	return m
}
