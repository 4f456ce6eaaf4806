package half

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/gocoll/gocoll/kernel"
)

// level is one way the bulk conversions can run on this machine: a kernel
// level, and at AVX512 whether VCVTNE2PS2BF16 is used.
type level struct {
	name string
	isa  kernel.ISA
	bf16 bool
}

// levels are the ways the conversions can run, from the pure-Go loop up;
// at those this CPU lacks the tests skip.
func levels() []level {
	var ls []level
	for isa := kernel.Generic; isa <= kernel.Best(); isa++ {
		ls = append(ls, level{name: isa.String(), isa: isa})
	}
	return append(ls, level{name: "avx512bf16", isa: kernel.AVX512, bf16: true})
}

// at runs f at level l and puts the level back afterwards.
func at(t *testing.T, l level, f func(t *testing.T)) {
	t.Run(l.name, func(t *testing.T) {
		if l.bf16 && (!hasBF16() || l.isa > kernel.Best()) {
			t.Skip("this CPU lacks AVX512_BF16 (lscpu shows no avx512_bf16): the VCVTNE2PS2BF16 loop is not tested here; run this test where it has it")
		}
		if l.isa > kernel.Best() {
			t.Skipf("this CPU lacks %s", l.isa)
		}
		old, oldBF16 := kernel.Active(), useBF16
		if err := kernel.SetISA(l.isa); err != nil {
			t.Fatal(err)
		}
		useBF16 = l.bf16
		defer func() {
			useBF16 = oldBF16
			if err := kernel.SetISA(old); err != nil {
				t.Fatal(err)
			}
		}()
		f(t)
	})
}

// narrowInputs are float32 values for the narrowing conversions: edge
// cases, every bfloat16 and float16 value, the halfway points between
// neighbours of each (ties) and one unit either side of them, and random
// bit patterns, in a shuffled order so that every vector mixes kinds.
func narrowInputs(short bool) []float32 {
	var bs []uint32
	edges := []uint32{
		0, 0x80000000, // ±0
		0x7f800000, 0xff800000, // ±Inf
		0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fbfffff, 0x7fffffff, 0xffffffff, 0x7f80ffff, 0x7f810000, // NaNs
		1, 0x80000001, 0x007fffff, 0x807fffff, 0x00008000, 0x00018000, 0x00007fff, // subnormals
		0x00800000, 0x7f7fffff, 0xff7fffff, 0x7f7f8000, 0x7f7f7fff, // smallest normal, largest finite, the bfloat16 overflow tie
		0x477fe000, 0x477fefff, 0x477ff000, 0x33000000, 0x33000001, 0x387fc000, 0x38800000, // float16 overflow, underflow, subnormal edges
	}
	bs = append(bs, edges...)
	for i := range uint32(1 << 16) {
		b := i << 16
		bs = append(bs, b, b|0x8000, b|0x7fff, b|0x8001) // a bfloat16, the tie above it, one below, one above
		f := math.Float32bits(Float16(i).Float32())
		bs = append(bs, f, f+0x1000, f+0xfff, f+0x1001) // a float16 (normal range), its ties
	}
	rng := rand.New(rand.NewPCG(1, 2))
	n := 1 << 20
	if short {
		n = 1 << 14
	}
	for range n {
		bs = append(bs, rng.Uint32())
	}
	rng.Shuffle(len(bs), func(i, j int) { bs[i], bs[j] = bs[j], bs[i] })
	fs := make([]float32, len(bs))
	for i, b := range bs {
		fs[i] = math.Float32frombits(b)
	}
	return fs
}

// lengths are slice lengths around the loops' widths and block sizes.
var lengths = []int{0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 95, 127, 128, 129, 255, 1000}

func TestBulk(t *testing.T) {
	narrow := narrowInputs(testing.Short())
	var halves []uint16
	for i := range 1 << 16 {
		halves = append(halves, uint16(i))
	}
	for _, l := range levels() {
		at(t, l, func(t *testing.T) {
			t.Run("BFloat16sFromFloat32s", func(t *testing.T) {
				testNarrow(t, narrow, BFloat16sFromFloat32s, BFloat16FromFloat32)
			})
			t.Run("Float16sFromFloat32s", func(t *testing.T) {
				testNarrow(t, narrow, Float16sFromFloat32s, Float16FromFloat32)
			})
			t.Run("Float32sFromBFloat16s", func(t *testing.T) {
				testWiden(t, halves, Float32sFromBFloat16s, BFloat16.Float32)
			})
			t.Run("Float32sFromFloat16s", func(t *testing.T) {
				testWiden(t, halves, Float32sFromFloat16s, Float16.Float32)
			})
		})
	}
}

// testNarrow checks bulk against the element conversion elem on all of in,
// and on every length in lengths at offsets 0-3 (so that vectors start
// unaligned), writing nothing past len(src).
func testNarrow[H ~uint16](t *testing.T, in []float32, bulk func([]H, []float32), elem func(float32) H) {
	got := make([]H, len(in))
	bulk(got, in)
	for i, f := range in {
		if want := elem(f); got[i] != want {
			t.Fatalf("element %d of %d: %#08x gave %#04x, the element conversion %#04x", i, len(in), math.Float32bits(f), uint16(got[i]), uint16(want))
		}
	}
	for _, n := range lengths {
		for off := range 4 {
			src := in[off : off+n]
			dst := make([]H, n+off+1)
			for i := range dst {
				dst[i] = 0x5a5a
			}
			bulk(dst[off:off+n], src)
			for i := range dst {
				want := H(0x5a5a)
				if i >= off && i < off+n {
					want = elem(src[i-off])
				}
				if dst[i] != want {
					t.Fatalf("length %d at offset %d: dst[%d] = %#04x, want %#04x", n, off, i, uint16(dst[i]), uint16(want))
				}
			}
		}
	}
}

// testWiden checks bulk against the element conversion elem on every
// 16-bit value, and on every length in lengths at offsets 0-3.
func testWiden[H ~uint16](t *testing.T, in []uint16, bulk func([]float32, []H), elem func(H) float32) {
	src := make([]H, len(in))
	for i, h := range in {
		src[i] = H(h)
	}
	got := make([]float32, len(src))
	bulk(got, src)
	for i, h := range src {
		if g, w := math.Float32bits(got[i]), math.Float32bits(elem(h)); g != w {
			t.Fatalf("%#04x gave %#08x, the element conversion %#08x", uint16(h), g, w)
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	rng.Shuffle(len(src), func(i, j int) { src[i], src[j] = src[j], src[i] })
	for _, n := range lengths {
		for off := range 4 {
			s := src[off : off+n]
			dst := make([]float32, n+off+1)
			for i := range dst {
				dst[i] = math.Float32frombits(0x5a5a5a5a)
			}
			bulk(dst[off:off+n], s)
			for i := range dst {
				want := uint32(0x5a5a5a5a)
				if i >= off && i < off+n {
					want = math.Float32bits(elem(s[i-off]))
				}
				if g := math.Float32bits(dst[i]); g != want {
					t.Fatalf("length %d at offset %d: dst[%d] = %#08x, want %#08x", n, off, i, g, want)
				}
			}
		}
	}
}

// TestBulkSubnormalBlocks mixes float32 subnormals into some blocks of an
// input and not others: the AVX512_BF16 loop must hand exactly those blocks
// to the integer formula, which rounds subnormals where VCVTNE2PS2BF16
// would flush them. At the other levels it is one more comparison.
func TestBulkSubnormalBlocks(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	src := make([]float32, 32*40+13)
	for i := range src {
		src[i] = float32(rng.NormFloat64())
	}
	for _, blk := range []int{0, 3, 4, 5, 17, 39, 40} {
		i := blk*32 + rng.IntN(min(32, len(src)-blk*32))
		src[i] = math.Float32frombits(uint32(rng.IntN(1<<23)) | uint32(rng.IntN(2))<<31)
	}
	src[7*32] = math.Float32frombits(0x00008000) // rounds to the smallest bfloat16 subnormal, not to 0
	for _, l := range levels() {
		at(t, l, func(t *testing.T) {
			got := make([]BFloat16, len(src))
			BFloat16sFromFloat32s(got, src)
			for i, f := range src {
				if want := BFloat16FromFloat32(f); got[i] != want {
					t.Fatalf("element %d (%#08x): %#04x, want %#04x", i, math.Float32bits(f), uint16(got[i]), uint16(want))
				}
			}
		})
	}
}

func TestBulkShortDst(t *testing.T) {
	for name, f := range map[string]func(){
		"BFloat16sFromFloat32s": func() { BFloat16sFromFloat32s(make([]BFloat16, 31), make([]float32, 32)) },
		"Float16sFromFloat32s":  func() { Float16sFromFloat32s(make([]Float16, 0), make([]float32, 1)) },
		"Float32sFromBFloat16s": func() { Float32sFromBFloat16s(nil, make([]BFloat16, 8)) },
		"Float32sFromFloat16s":  func() { Float32sFromFloat16s(make([]float32, 15), make([]Float16, 16)) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if r := recover(); r == nil {
					t.Fatal("a dst shorter than src did not panic")
				} else if s := fmt.Sprint(r); s == "" {
					t.Fatal("empty panic message")
				}
			}()
			f()
		})
	}
	// A longer dst is fine: the elements past len(src) stay as they were.
	dst := []BFloat16{9, 9, 9}
	BFloat16sFromFloat32s(dst, []float32{1})
	if dst[0] != BFloat16FromFloat32(1) || dst[1] != 9 || dst[2] != 9 {
		t.Fatalf("dst = %v", dst)
	}
}

// BenchmarkBulk compares each bulk conversion of 1 Mi elements at the
// active level with the loop of element conversions it replaces. Every
// iteration times one bulk call and one loop back to back, so that both
// see the same machine load, and the benchmark reports the medians
// (bulk-us, loop-us) and the median of the per-iteration ratios (x-loop:
// how many times faster the bulk call was). Run it with -benchtime 200x or
// more; ns/op is the pair's.
func BenchmarkBulk(b *testing.B) {
	const n = 1 << 20
	rng := rand.New(rand.NewPCG(7, 8))
	f32 := make([]float32, n)
	for i := range f32 {
		f32[i] = float32(rng.NormFloat64())
	}
	bf := make([]BFloat16, n)
	fh := make([]Float16, n)
	out := make([]float32, n)
	BFloat16sFromFloat32s(bf, f32)
	Float16sFromFloat32s(fh, f32)
	median := func(x []float64) float64 {
		slices.Sort(x)
		return x[len(x)/2]
	}
	run := func(name string, bulk, loop func()) {
		b.Run(name, func(b *testing.B) {
			var tb, tl, r []float64
			for b.Loop() {
				t0 := time.Now()
				bulk()
				t1 := time.Now()
				loop()
				t2 := time.Now()
				db, dl := t1.Sub(t0).Seconds(), t2.Sub(t1).Seconds()
				tb, tl, r = append(tb, db), append(tl, dl), append(r, dl/db)
			}
			b.ReportMetric(median(tb)*1e6, "bulk-us")
			b.ReportMetric(median(tl)*1e6, "loop-us")
			b.ReportMetric(median(r), "x-loop")
		})
	}
	run("BFloat16sFromFloat32s", func() { BFloat16sFromFloat32s(bf, f32) }, func() {
		for i, f := range f32 {
			bf[i] = BFloat16FromFloat32(f)
		}
	})
	run("Float32sFromBFloat16s", func() { Float32sFromBFloat16s(out, bf) }, func() {
		for i, h := range bf {
			out[i] = h.Float32()
		}
	})
	run("Float16sFromFloat32s", func() { Float16sFromFloat32s(fh, f32) }, func() {
		for i, f := range f32 {
			fh[i] = Float16FromFloat32(f)
		}
	})
	run("Float32sFromFloat16s", func() { Float32sFromFloat16s(out, fh) }, func() {
		for i, h := range fh {
			out[i] = h.Float32()
		}
	})
}
