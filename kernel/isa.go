package kernel

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"github.com/klauspost/cpuid/v2"
)

// ISA is an instruction-set level the kernels run at.
type ISA int

const (
	// Generic is the pure-Go kernels, on any CPU.
	Generic ISA = iota
	// AVX2 is the AVX2 kernels; they need AVX2, FMA and F16C.
	AVX2
	// AVX512 is the AVX-512 kernels; they need AVX-512 F, BW, VL and DQ
	// (and everything AVX2 needs).
	AVX512
	// NumISA is the number of levels.
	NumISA
)

// String is the level's name, as GOCOLL_ISA spells it.
func (i ISA) String() string {
	switch i {
	case Generic:
		return "generic"
	case AVX2:
		return "avx2"
	case AVX512:
		return "avx512"
	}
	return fmt.Sprintf("ISA(%d)", int(i))
}

// ParseISA parses a level name: generic, avx2 or avx512.
func ParseISA(s string) (ISA, error) {
	for i := Generic; i < NumISA; i++ {
		if strings.EqualFold(s, i.String()) {
			return i, nil
		}
	}
	return Generic, fmt.Errorf("kernel: unknown ISA level %q: use generic, avx2 or avx512", s)
}

// Detect returns the best level this CPU (and its operating system's
// register saving) supports.
func Detect() ISA {
	c := &cpuid.CPU
	avx2 := c.Supports(cpuid.AVX2, cpuid.FMA3, cpuid.F16C)
	if avx2 && c.Supports(cpuid.AVX512F, cpuid.AVX512BW, cpuid.AVX512VL, cpuid.AVX512DQ) {
		return AVX512
	}
	if avx2 {
		return AVX2
	}
	return Generic
}

// EnvISA is the environment variable that picks a level at start-up:
// generic, avx2 or avx512. Unset, the kernels run at Detect's level. The
// level also caps package half's bulk conversions.
const EnvISA = "GOCOLL_ISA"

var (
	best   = Detect()
	active atomic.Int32
	// envErr is why GOCOLL_ISA could not be followed; see CheckEnv.
	envErr error
)

func init() {
	level := best
	if v := os.Getenv(EnvISA); v != "" {
		want, err := ParseISA(v)
		switch {
		case err != nil:
			envErr = fmt.Errorf("%s=%q: %w", EnvISA, v, err)
		case want > best:
			envErr = fmt.Errorf("%s=%s, but this CPU supports at most %s: unset it or pick a level up to %s", EnvISA, v, best, best)
		default:
			level = want
		}
	}
	active.Store(int32(level))
}

// CheckEnv reports whether GOCOLL_ISA was followed: nil if it is unset or
// named a level this CPU has; otherwise an error saying what to change.
// A bad GOCOLL_ISA never stops a program: the kernels run at Detect's
// level, and programs or tests that must honour the variable call CheckEnv.
func CheckEnv() error { return envErr }

// Best returns the highest level this CPU supports (Detect, computed once).
func Best() ISA { return best }

// Active returns the level the kernels run at now.
func Active() ISA { return ISA(active.Load()) }

// SetISA makes the kernels run at level isa from now on, for every
// goroutine. It fails, changing nothing, if the CPU lacks that level.
func SetISA(isa ISA) error {
	if isa < Generic || isa >= NumISA {
		return fmt.Errorf("kernel: no ISA level %d: use Generic, AVX2 or AVX512", int(isa))
	}
	if isa > best {
		return fmt.Errorf("kernel: this CPU lacks %s (it supports at most %s): pick a level up to %s", isa, best, best)
	}
	active.Store(int32(isa))
	return nil
}
