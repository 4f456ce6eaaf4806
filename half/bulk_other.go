//go:build !amd64 || purego

package half

// Without assembly every element goes through the element conversions;
// each of these reports that it converted none.

func bf16FromF32Arch(dst []BFloat16, src []float32) int { return 0 }
func f32FromBF16Arch(dst []float32, src []BFloat16) int { return 0 }
func f16FromF32Arch(dst []Float16, src []float32) int   { return 0 }
func f32FromF16Arch(dst []float32, src []Float16) int   { return 0 }

// useBF16 and hasBF16 are the amd64 build's, which tests set and read.
var useBF16 = false

func hasBF16() bool { return false }
