// Package kerneltest tests reduction kernels. A generated kernels package
// runs Run over its table: every dtype x op as registered with core, the
// pure-Go level against an independent oracle, every level the CPU has
// against the pure-Go level bit for bit, the finish step, and no
// allocations per call. Package kernel/generic runs CheckOracle and
// CheckDivide on its kernels directly.
//
// None of it depends on a spec: the cases name their element type as a
// spec's go: does ("float32", "BFloat16", "complex64", ...), which says how
// to draw values and what the oracle computes.
package kerneltest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/kernel"
)

// Case is one dtype x op of a generated kernels package.
type Case struct {
	DType core.DType
	Op    core.Op
	// Elem is the element's Go type as the spec's go: names it.
	Elem string
	// Asm says the build has assembly kernels for it: the registered
	// Impl has AVX2 and AVX-512 levels of its own (and none otherwise).
	Asm bool
}

// resolved is a case with its registered kernel.
type resolved struct {
	Case
	k *core.Kernel
	e elem
}

func (c resolved) name() string { return c.k.Type.Name + "/" + c.k.Op.Name }

// reducesAs is the op the kernel computes: an op whose finish step
// divides reduces as a sum.
func reducesAs(k *core.Kernel) string {
	if k.Op.Finish == core.FinishDivide {
		return "sum"
	}
	return k.Op.Name
}

// Run tests every case's kernel as registered with core. It sets the
// active ISA level while it runs (kernel.SetISA), so it must not run in
// parallel with other kernel users. -short trims the lengths and input
// counts, for the AVX-512 emulator.
func Run(t *testing.T, cases []Case) {
	var rs []resolved
	t.Run("registry", func(t *testing.T) {
		for _, c := range cases {
			e, ok := elems[c.Elem]
			if !ok {
				t.Fatalf("dtype %v: kerneltest does not know element type %q", c.DType, c.Elem)
			}
			ty := core.LookupType(c.DType)
			if ty == nil {
				t.Fatalf("dtype %v is not registered with core", c.DType)
			}
			if ty.Size != e.size {
				t.Errorf("dtype %v: registered size %d, but %s is %d bytes", ty.Name, ty.Size, c.Elem, e.size)
			}
			k := ty.Kernel(c.Op)
			if k == nil {
				t.Fatalf("dtype %v has no kernel for op %v", ty.Name, c.Op)
			}
			for _, l := range []kernel.ISA{kernel.AVX2, kernel.AVX512} {
				if (k.Impl[l] != nil) != c.Asm {
					t.Errorf("%s/%s: %s kernel present = %v, want %v", ty.Name, k.Op.Name, l, k.Impl[l] != nil, c.Asm)
				}
			}
			if k.Op.Finish == core.FinishDivide && ty.Divide == nil {
				t.Errorf("%s/%s: the op divides but the type has no Divide", ty.Name, k.Op.Name)
			}
			rs = append(rs, resolved{c, k, e})
		}
	})
	if t.Failed() {
		return
	}
	t.Run("oracle", func(t *testing.T) {
		for _, c := range rs {
			t.Run(c.name(), func(t *testing.T) { CheckOracle(t, c.Elem, reducesAs(c.k), c.k.Impl[kernel.Generic]) })
		}
	})
	t.Run("levels", func(t *testing.T) { levels(t, rs) })
	t.Run("finish", func(t *testing.T) {
		for _, c := range rs {
			t.Run(c.name(), func(t *testing.T) { finish(t, c) })
		}
	})
	t.Run("allocs", func(t *testing.T) {
		for _, c := range rs {
			allocs(t, c)
		}
	})
}

// reduce runs f on dst and srcs through kernel.Reducer, as core does.
func reduce(f kernel.Func, e elem, dst []byte, srcs [][]byte) {
	(*kernel.Reducer)(nil).Run(f, dst, srcs, len(dst)/e.size)
}

// CheckOracle checks f, a kernel computing op (sum, prod, min, max, band,
// bor or bxor) on elements of Go type elem, against the oracle: random
// inputs for n = 1..16 of them, longer ones, and every pair of special
// values.
func CheckOracle(t *testing.T, elem, op string, f kernel.Func) {
	t.Helper()
	e, ok := elems[elem]
	if !ok {
		t.Fatalf("kerneltest does not know element type %q", elem)
	}
	r := rand.New(rand.NewPCG(7, 7))
	check := func(srcs [][]byte, what string) {
		t.Helper()
		dst := make([]byte, len(srcs[0]))
		reduce(f, e, dst, srcs)
		xs := make([]uint64, len(srcs))
		for i := 0; i < len(dst); i += e.lsize {
			for k, s := range srcs {
				xs[k] = getLane(s[i:], e.lsize)
			}
			want := oracleLane(e.lane, op, xs)
			if got := getLane(dst[i:], e.lsize); got != want {
				t.Fatalf("%s %s %s: byte %d: inputs %#x: got %#x, want %#x", elem, op, what, i, xs, got, want)
			}
		}
	}
	inputs := func(n, elems int) [][]byte {
		srcs := make([][]byte, n)
		for k := range srcs {
			srcs[k] = make([]byte, elems*e.size)
			fill(r, e, srcs[k])
		}
		return srcs
	}
	for n := 1; n <= 16; n++ {
		check(inputs(n, 61), fmt.Sprintf("n=%d", n))
	}
	check(inputs(3, 1000), "n=3 len=1000")
	sp := specials[e.lane]
	if sp == nil {
		sp = intSpecials
	}
	lanes := len(sp) * len(sp)
	nb := (lanes*e.lsize + e.size - 1) / e.size * e.size // whole elements
	a, b := make([]byte, nb), make([]byte, nb)
	for i, x := range sp {
		for j, y := range sp {
			putLane(a[(i*len(sp)+j)*e.lsize:], e.lsize, x)
			putLane(b[(i*len(sp)+j)*e.lsize:], e.lsize, y)
		}
	}
	check([][]byte{a, b}, "special pairs")
}

// CheckDivide checks divide, the finish step of an op that divides
// (core.Type's Divide), on elements of Go type elem: every element divided
// once by nranks = 1..9, 16-bit floats in float32 and rounded once.
func CheckDivide(t *testing.T, elem string, divide func(p unsafe.Pointer, n, nranks int)) {
	t.Helper()
	e, ok := elems[elem]
	if !ok {
		t.Fatalf("kerneltest does not know element type %q", elem)
	}
	if !isFloat(e.lane) {
		t.Fatalf("kerneltest: %s does not divide", elem)
	}
	r := rand.New(rand.NewPCG(11, 11))
	orig := make([]byte, 600*e.size)
	fill(r, e, orig)
	buf := make([]byte, len(orig))
	for nranks := 1; nranks <= 9; nranks++ {
		copy(buf, orig)
		divide(unsafe.Pointer(unsafe.SliceData(buf)), len(buf)/e.size, nranks)
		for i := 0; i < len(buf); i += e.lsize {
			x := getLane(orig[i:], e.lsize)
			want := oracleDivide(e.lane, x, nranks)
			if got := getLane(buf[i:], e.lsize); got != want {
				t.Fatalf("%s nranks=%d: byte %d: %#x -> %#x, want %#x", elem, nranks, i, x, got, want)
			}
		}
	}
}

// finish checks a registered kernel's Finish: the oracle's division for an
// op that divides, nothing for the others.
func finish(t *testing.T, c resolved) {
	if c.k.Op.Finish == core.FinishDivide {
		CheckDivide(t, c.Elem, c.k.Type.Divide)
	}
	r := rand.New(rand.NewPCG(13, 13))
	buf := make([]byte, 257*c.e.size)
	fill(r, c.e, buf)
	orig := append([]byte(nil), buf...)
	for nranks := 1; nranks <= 4; nranks++ {
		copy(buf, orig)
		c.k.Finish(buf, nranks)
		for i := 0; i < len(buf); i += c.e.lsize {
			x := getLane(orig[i:], c.e.lsize)
			want := x
			if c.k.Op.Finish == core.FinishDivide {
				want = oracleDivide(c.e.lane, x, nranks)
			}
			if got := getLane(buf[i:], c.e.lsize); got != want {
				t.Fatalf("Finish nranks=%d: byte %d: %#x -> %#x, want %#x", nranks, i, x, got, want)
			}
		}
	}
}

// allocs checks that reducing 16 inputs allocates nothing, with and
// without a Reducer, at the pure-Go level and the active one.
func allocs(t *testing.T, c resolved) {
	srcs := make([][]byte, 16)
	for i := range srcs {
		srcs[i] = make([]byte, 300*c.e.size)
	}
	dst := make([]byte, 300*c.e.size)
	var red kernel.Reducer
	for what, f := range map[string]func(){
		"Reduce":               func() { c.k.Reduce(nil, dst, srcs) },
		"Reduce with Reducer":  func() { c.k.Reduce(&red, dst, srcs) },
		"ReduceAt(generic)":    func() { c.k.ReduceAt(kernel.Generic, nil, dst, srcs) },
		"Finish of 300 values": func() { c.k.Finish(dst, 3) },
	} {
		if a := testing.AllocsPerRun(20, f); a != 0 {
			t.Errorf("%s: %s allocates %v times per call", c.name(), what, a)
		}
	}
}

// levels checks every case at every ISA level this CPU has against the
// pure-Go level, bit for bit: lengths 0..300 and large ones, n = 1..16
// inputs (and 17 and 33), starts at every alignment, dst in place, and
// guard bytes around dst that must stay untouched. Half the calls go
// through the active level (kernel.SetISA, Kernel.Reduce), half through
// Kernel.ReduceAt.
func levels(t *testing.T, rs []resolved) {
	ns := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	var lengths []int
	for l := 0; l <= 300; l++ {
		lengths = append(lengths, l)
	}
	// Large lengths, each with the input counts it runs with.
	const big1, big2 = 1<<18 + 13, 1<<16 + 3
	large := map[int][]int{big1: {2}, big2: {2, 9}}
	if testing.Short() {
		ns = []int{1, 2, 3, 5, 16}
		lengths = lengths[:131]
		lengths = append(lengths, 255, 256, 257, 300)
		large = nil
	}
	const guard = 64
	old := kernel.Active()
	defer kernel.SetISA(old)
	pools := map[core.DType][][]byte{}
	for _, c := range rs {
		if pools[c.DType] != nil {
			continue
		}
		// One pool of inputs per type, sliced at varying offsets: the
		// first two long enough for big1, the next seven for big2.
		r := rand.New(rand.NewPCG(uint64(c.DType), 5))
		pool := make([][]byte, 33)
		for k := range pool {
			l := 300
			if large != nil && k < 2 {
				l = big1
			} else if large != nil && k < 9 {
				l = big2
			}
			pool[k] = make([]byte, (l+64)*c.e.size)
			fill(r, c.e, pool[k])
		}
		pools[c.DType] = pool
	}
	for isa := kernel.Generic; isa <= kernel.Best(); isa++ {
		for _, c := range rs {
			t.Run(fmt.Sprintf("%s/%s", isa, c.name()), func(t *testing.T) {
				if err := kernel.SetISA(isa); err != nil {
					t.Fatal(err)
				}
				r := rand.New(rand.NewPCG(uint64(c.DType)<<8|uint64(c.Op), uint64(isa)))
				pool := pools[c.DType]
				for _, n := range ns {
					for _, l := range lengths {
						runCase(t, r, c, isa, pool, n, l, guard)
					}
				}
				// More inputs than the pointer pool holds.
				for _, n := range []int{17, 33} {
					for l := 0; l < 70; l += 3 {
						runCase(t, r, c, isa, pool, n, l, guard)
					}
				}
				for _, l := range []int{big1, big2} {
					for _, n := range large[l] {
						runCase(t, r, c, isa, pool, n, l, guard)
					}
				}
			})
		}
	}
}

func runCase(t *testing.T, r *rand.Rand, c resolved, isa kernel.ISA, pool [][]byte, n, l, guard int) {
	t.Helper()
	size := c.e.size
	nb := l * size
	srcs := make([][]byte, n)
	for k := range srcs {
		off := r.IntN(64)
		srcs[k] = pool[k][off : off+nb : off+nb]
	}
	want := make([]byte, nb)
	c.k.ReduceAt(kernel.Generic, nil, want, srcs)

	// dst inside a buffer with guard bytes on both sides, at any alignment.
	off := r.IntN(guard)
	buf := make([]byte, off+nb+guard)
	for i := range buf {
		buf[i] = byte(0xa5 ^ i)
	}
	dst := buf[off : off+nb : off+nb]
	inPlace := n > 1 && r.IntN(5) == 0
	if inPlace {
		k := r.IntN(n)
		copy(dst, srcs[k])
		srcs[k] = dst
	}
	var red *kernel.Reducer
	if r.IntN(2) == 0 {
		red = new(kernel.Reducer)
	}
	if r.IntN(2) == 0 {
		c.k.Reduce(red, dst, srcs)
	} else {
		c.k.ReduceAt(isa, red, dst, srcs)
	}
	if !bytes.Equal(dst, want) {
		for i := 0; i < nb; i += c.e.lsize {
			if g, w := getLane(dst[i:], c.e.lsize), getLane(want[i:], c.e.lsize); g != w {
				xs := make([]uint64, n)
				for k := range srcs {
					xs[k] = getLane(srcs[k][i:], c.e.lsize)
				}
				t.Fatalf("n=%d len=%d in-place=%v: byte %d: got %#x, want %#x (inputs %#x)", n, l, inPlace, i, g, w, xs)
			}
		}
	}
	for i := range buf {
		if (i < off || i >= off+nb) && buf[i] != byte(0xa5^i) {
			t.Fatalf("n=%d len=%d: byte %d outside dst (dst is [%d, %d)) changed", n, l, i, off, off+nb)
		}
	}
}
