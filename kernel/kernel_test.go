package kernel

import (
	"testing"
	"unsafe"
)

// sumBytes is a kernel for the tests: byte-wise wrapping sum.
func sumBytes(dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {
	in := unsafe.Slice(srcs, nsrc)
	d := unsafe.Slice((*byte)(dst), n)
	for i := range d {
		acc := *(*byte)(unsafe.Add(in[0], i))
		for _, p := range in[1:] {
			acc += *(*byte)(unsafe.Add(p, i))
		}
		d[i] = acc
	}
}

func TestReducerRun(t *testing.T) {
	for _, nsrc := range []int{1, 2, 16, 17, 40} {
		srcs := make([][]byte, nsrc)
		for i := range srcs {
			srcs[i] = []byte{byte(i), 1, 2}
		}
		want := []byte{byte(nsrc * (nsrc - 1) / 2), byte(nsrc), byte(2 * nsrc)}
		for _, r := range []*Reducer{nil, new(Reducer)} {
			dst := make([]byte, 3)
			r.Run(sumBytes, dst, srcs, 3)
			if string(dst) != string(want) {
				t.Errorf("nsrc=%d reducer=%v: got %v, want %v", nsrc, r != nil, dst, want)
			}
			if r != nil {
				for i, p := range r.ptrs {
					if p != nil {
						t.Fatalf("the Reducer keeps input %d alive", i)
					}
				}
			}
		}
	}
	// Nothing to do: the kernel is not called.
	var called bool
	(*Reducer)(nil).Run(func(unsafe.Pointer, *unsafe.Pointer, int, int) { called = true }, nil, [][]byte{nil}, 0)
	if called {
		t.Error("Run called the kernel for 0 elements")
	}
}

func TestReducerNoAllocs(t *testing.T) {
	srcs := make([][]byte, 16)
	for i := range srcs {
		srcs[i] = make([]byte, 64)
	}
	dst := make([]byte, 64)
	var red Reducer
	if a := testing.AllocsPerRun(100, func() { (*Reducer)(nil).Run(sumBytes, dst, srcs, 64) }); a != 0 {
		t.Errorf("Run with a nil Reducer allocates %v times per call", a)
	}
	if a := testing.AllocsPerRun(100, func() { red.Run(sumBytes, dst, srcs, 64) }); a != 0 {
		t.Errorf("Run with a Reducer allocates %v times per call", a)
	}
}

func TestImplAt(t *testing.T) {
	var im Impl
	im[Generic] = sumBytes
	for l := Generic; l < NumISA; l++ {
		if im.At(l) == nil {
			t.Errorf("At(%s) is nil with a generic kernel", l)
		}
	}
	calls := map[string]int{}
	im[AVX2] = func(unsafe.Pointer, *unsafe.Pointer, int, int) { calls["avx2"]++ }
	im.At(AVX512)(nil, nil, 0, 0)
	im.At(AVX2)(nil, nil, 0, 0)
	if calls["avx2"] != 2 {
		t.Errorf("At(AVX512) and At(AVX2) without an AVX-512 kernel ran the AVX2 one %d times, want 2", calls["avx2"])
	}
}

func TestPartlyOverlap(t *testing.T) {
	b := make([]byte, 16)
	for _, c := range []struct {
		a, b []byte
		want bool
	}{
		{b[:8], b[8:], false},
		{b[:8], b[:8], false},
		{b[:8], b[:4], false}, // same start: in place, not a partial overlap
		{b[:8], b[4:12], true},
		{b[4:12], b[:8], true},
		{b[:0], b, false},
	} {
		if got := PartlyOverlap(c.a, c.b); got != c.want {
			t.Errorf("PartlyOverlap(b[%d:%d], b[%d:%d]) = %v", cap(b)-cap(c.a), cap(b)-cap(c.a)+len(c.a), cap(b)-cap(c.b), cap(b)-cap(c.b)+len(c.b), got)
		}
	}
}
