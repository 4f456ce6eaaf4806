package core

import (
	"errors"
	"testing"
	"unsafe"
)

func TestCheckVectorAccepts(t *testing.T) {
	buf := make([]byte, 4*64)
	cases := []struct {
		name       string
		req        Request
		rank, size int
	}{
		{"allgatherv packed", Request{Kind: KindAllgatherv, DType: tInt32, RecvCounts: []int{1, 0, 2}, Send: buf[:0], Recv: buf[64 : 64+12]}, 1, 3},
		{"allgatherv displaced, longer recv", Request{Kind: KindAllgatherv, DType: tInt32, RecvCounts: []int{1, 2}, RecvDispls: []int{5, 0}, Send: buf[:4], Recv: buf[64:128]}, 0, 2},
		{"gatherv off root ignores recv and displs", Request{Kind: KindGatherv, DType: tInt32, Root: 1, RecvCounts: []int{3, 1}, RecvDispls: []int{-1}, Send: buf[:12], Recv: buf[:4]}, 0, 2},
		{"scatterv root", Request{Kind: KindScatterv, DType: tInt32, Root: 0, SendCounts: []int{2, 2}, SendDispls: []int{2, 0}, Send: buf[:16], Recv: buf[64:72]}, 0, 2},
		{"alltoallv", Request{Kind: KindAlltoallv, DType: tHalf, SendCounts: []int{1, 2}, RecvCounts: []int{3, 0}, RecvDispls: []int{0, 9}, Send: buf[:6], Recv: buf[64:70]}, 1, 2},
		{"reduce_scatter_v", Request{Kind: KindReduceScatterV, DType: tInt32, Op: oSum, RecvCounts: []int{2, 0, 1}, Send: buf[:12], Recv: buf[64:64]}, 1, 3},
		{"everything empty", Request{Kind: KindAlltoallv, DType: tInt32, SendCounts: []int{0}, RecvCounts: []int{0}}, 0, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := c.req
			if err := Check(&req, c.rank, c.size); err != nil {
				t.Fatal(err)
			}
			if req.Type == nil || req.Count != 0 {
				t.Errorf("Type %v, Count %d after the check", req.Type, req.Count)
			}
			sh := req.Kind.Shape()
			if sh.SharedCounts() != (req.Digest != 0) {
				t.Errorf("digest %#x for shared counts %v", req.Digest, sh.SharedCounts())
			}
			if req.Kind == KindGatherv && (req.Recv != nil || req.RecvDispls != nil) {
				t.Error("gatherv off the root kept its recv side")
			}
		})
	}
}

func TestCheckVectorRefuses(t *testing.T) {
	buf := make([]byte, 4*64)
	cases := []struct {
		name       string
		req        Request
		rank, size int
		want       error
	}{
		{"counts of the wrong size", Request{Kind: KindAllgatherv, DType: tInt32, RecvCounts: []int{1}, Send: buf[:4], Recv: buf[64:72]}, 0, 2, ErrInvalid},
		{"negative count", Request{Kind: KindAllgatherv, DType: tInt32, RecvCounts: []int{1, -1}, Send: buf[:4], Recv: buf[64:68]}, 0, 2, ErrInvalid},
		{"send not my count", Request{Kind: KindAllgatherv, DType: tInt32, RecvCounts: []int{1, 2}, Send: buf[:8], Recv: buf[64:76]}, 0, 2, ErrBufferLength},
		{"packed recv too long", Request{Kind: KindAllgatherv, DType: tInt32, RecvCounts: []int{1, 2}, Send: buf[:4], Recv: buf[64:80]}, 0, 2, ErrBufferLength},
		{"displaced blocks overlap", Request{Kind: KindAllgatherv, DType: tInt32, RecvCounts: []int{2, 2}, RecvDispls: []int{1, 0}, Send: buf[:8], Recv: buf[64:128]}, 0, 2, ErrInvalid},
		{"displaced block past the end", Request{Kind: KindAllgatherv, DType: tInt32, RecvCounts: []int{1, 2}, RecvDispls: []int{0, 3}, Send: buf[:4], Recv: buf[64:80]}, 0, 2, ErrBufferLength},
		{"negative displacement", Request{Kind: KindScatterv, DType: tInt32, SendCounts: []int{1, 1}, SendDispls: []int{0, -1}, Send: buf[:8], Recv: buf[64:68]}, 0, 2, ErrInvalid},
		{"displacements of the wrong size", Request{Kind: KindAlltoallv, DType: tInt32, SendCounts: []int{1, 1}, SendDispls: []int{0}, RecvCounts: []int{1, 1}, Send: buf[:8], Recv: buf[64:72]}, 0, 2, ErrInvalid},
		{"send and recv overlap", Request{Kind: KindAlltoallv, DType: tInt32, SendCounts: []int{1, 1}, RecvCounts: []int{1, 1}, Send: buf[:8], Recv: buf[:8]}, 0, 2, ErrInvalid},
		{"reduce_scatter_v send not the sum", Request{Kind: KindReduceScatterV, DType: tInt32, Op: oSum, RecvCounts: []int{1, 1}, Send: buf[:4], Recv: buf[64:68]}, 0, 2, ErrBufferLength},
		{"reduce_scatter_v without an op", Request{Kind: KindReduceScatterV, DType: tInt32, RecvCounts: []int{1, 1}, Send: buf[:8], Recv: buf[64:68]}, 0, 2, ErrUnsupported},
		{"gatherv root out of range", Request{Kind: KindGatherv, DType: tInt32, Root: 2, RecvCounts: []int{1, 1}, Send: buf[:4]}, 0, 2, ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := c.req
			if err := Check(&req, c.rank, c.size); !errors.Is(err, c.want) {
				t.Fatalf("Check = %v, want %v", err, c.want)
			}
		})
	}
}

func TestCountsDigest(t *testing.T) {
	seen := map[uint64][]int{}
	for _, v := range [][]int{{}, {0}, {0, 0}, {1, 0}, {0, 1}, {1 << 40, 0}, {0, 1 << 40}, {3, 4, 5}, {3, 5, 4}} {
		d := CountsDigest(v)
		if d == 0 {
			t.Errorf("digest of %v is 0", v)
		}
		if w, ok := seen[d]; ok {
			t.Errorf("%v and %v share digest %#x", v, w, d)
		}
		seen[d] = v
	}
	if got := CountsText(make([]int, 20)); got != "[0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 ... (4 more)]" {
		t.Errorf("CountsText = %q", got)
	}
}

// vecRule says, element by element, whether Check must accept a vector
// request: an independent statement of the rules checkVector implements.
func vecRule(req Request, rank, size int) bool {
	sh := req.Kind.Shape()
	if sh == nil || !sh.Vector() {
		return false
	}
	var es int
	switch req.DType {
	case tInt32:
		es = 4
	case tHalf:
		es = 2
	default:
		return false
	}
	if sh.Op && !((req.DType == tInt32 && (req.Op == oSum || req.Op == oXor)) || (req.DType == tHalf && req.Op == oAvg)) {
		return false
	}
	if sh.Root && (req.Root < 0 || req.Root >= size) {
		return false
	}
	isRoot := !sh.Root || rank == req.Root
	for _, v := range []struct {
		on  bool
		vec []int
	}{{sh.SendCounts, req.SendCounts}, {sh.RecvCounts, req.RecvCounts}} {
		if !v.on {
			continue
		}
		if len(v.vec) != size {
			return false
		}
		for _, c := range v.vec {
			if c < 0 {
				return false
			}
		}
	}
	shared := req.RecvCounts
	if !sh.RecvCounts {
		shared = req.SendCounts
	}
	total := func(v []int) int {
		s := 0
		for _, c := range v {
			s += c
		}
		return s
	}
	fits := func(e Extent, buf []byte, counts, displs []int) bool {
		switch e {
		case Mine:
			return len(buf) == shared[rank]*es
		case Sum:
			return len(buf) == total(shared)*es
		}
		if displs == nil {
			return len(buf) == total(counts)*es
		}
		if len(displs) != size {
			return false
		}
		used := make([]bool, len(buf)/es)
		for j, d := range displs {
			if d < 0 {
				return false
			}
			for k := d; k < d+counts[j]; k++ {
				if k >= len(used) || used[k] {
					return false
				}
				used[k] = true
			}
		}
		return true
	}
	sendOn := !sh.SendRootOnly || isRoot
	recvOn := !sh.RecvRootOnly || isRoot
	if sendOn && !fits(sh.Send, req.Send, req.SendCounts, req.SendDispls) {
		return false
	}
	if recvOn && !fits(sh.Recv, req.Recv, req.RecvCounts, req.RecvDispls) {
		return false
	}
	if sendOn && recvOn && len(req.Send) > 0 && len(req.Recv) > 0 {
		s, r := uintptr(unsafe.Pointer(unsafe.SliceData(req.Send))), uintptr(unsafe.Pointer(unsafe.SliceData(req.Recv)))
		if s < r+uintptr(len(req.Recv)) && r < s+uintptr(len(req.Send)) {
			return false
		}
	}
	return true
}

// FuzzCheckVector draws vector requests (counts and displacements from the
// fuzzer's bytes, buffers as windows of one arena) and holds Check to
// vecRule.
func FuzzCheckVector(f *testing.F) {
	f.Add(uint8(0), uint8(250), uint8(250), uint8(0), []byte{1, 2, 3, 4, 5, 6, 7, 8}, uint16(0), uint16(8), uint16(100), uint16(24), uint8(0), uint8(2), uint8(0))
	f.Add(uint8(3), uint8(251), uint8(0), uint8(0), []byte{2, 0, 1, 3, 9, 9, 9, 9}, uint16(0), uint16(4), uint16(200), uint16(16), uint8(1), uint8(2), uint8(3))
	f.Add(uint8(4), uint8(250), uint8(250), uint8(0), []byte{1, 1, 1, 0, 0, 0}, uint16(0), uint16(12), uint16(100), uint16(4), uint8(1), uint8(3), uint8(0))
	arena := make([]byte, 1<<12)
	f.Fuzz(func(t *testing.T, kind, dt, op, root uint8, vec []byte, sOff, sLen, rOff, rLen uint16, rank, size, displFlags uint8) {
		n := int(size%6) + 1
		me := int(rank) % n
		at := 0
		next := func() int {
			if at >= len(vec) {
				return 0
			}
			b := vec[at]
			at++
			if b == 255 {
				return -1
			}
			return int(b % 7)
		}
		mk := func(displ bool) []int {
			if displ {
				v := make([]int, n)
				for j := range v {
					v[j] = next() * 2
				}
				return v
			}
			v := make([]int, n)
			for j := range v {
				v[j] = next()
			}
			return v
		}
		win := func(off, l uint16) []byte {
			if l == 0 {
				return nil
			}
			o := int(off) % len(arena)
			return arena[o:min(o+int(l), len(arena))]
		}
		req := Request{Kind: KindAllgatherv + Kind(kind%5), DType: DType(dt), Op: Op(op), Root: int(root) % (n + 1),
			SendCounts: mk(false), RecvCounts: mk(false), Send: win(sOff, sLen), Recv: win(rOff, rLen)}
		if displFlags&1 != 0 {
			req.SendDispls = mk(true)
		}
		if displFlags&2 != 0 {
			req.RecvDispls = mk(true)
		}
		want := vecRule(req, me, n)
		got := req
		err := Check(&got, me, n)
		if (err == nil) != want {
			t.Fatalf("Check(%+v, rank %d of %d) = %v; the rule says accept=%v", req, me, n, err, want)
		}
		if err != nil && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrBufferLength) {
			t.Fatalf("error %v wraps none of ErrInvalid, ErrUnsupported, ErrBufferLength", err)
		}
	})
}

func TestCountsEdgeSum(t *testing.T) {
	// A consistent 3-rank matrix: send[i][j] == recv[j][i].
	send := [][]int{{1, 2, 3}, {4, 5, 6}, {7, 8, 9}}
	recv := [][]int{{1, 4, 7}, {2, 5, 8}, {3, 6, 9}}
	sum := func() uint64 {
		var s uint64
		for r := range send {
			s += CountsEdgeSum(r, send[r], recv[r])
		}
		return s
	}
	if s := sum(); s != 0 {
		t.Fatalf("consistent counts sum to %#x", s)
	}
	if e := PairCountsMismatch(1, 0, send, recv); e != nil {
		t.Fatalf("consistent counts: %v", e)
	}
	recv[2][1] = 7 // rank 2 expects 7 from rank 1, which sends 8
	if s := sum(); s == 0 {
		t.Fatal("inconsistent counts sum to 0")
	}
	for r := range send {
		e := PairCountsMismatch(1, r, send, recv)
		if e == nil || e.Field != "counts" {
			t.Fatalf("rank %d: %v", r, e)
		}
		if want := map[int]int{0: 1, 1: 2, 2: 1}[r]; e.Peer != want {
			t.Errorf("rank %d names rank %d, want %d: %v", r, e.Peer, want, e)
		}
	}
	// Swapped entries keep the sums of the counts but not the hash.
	send[1][2], send[1][0] = 4, 6
	recv[2][1] = 8
	if s := sum(); s == 0 {
		t.Fatal("swapped counts sum to 0")
	}
}

func TestSharedCountsMismatch(t *testing.T) {
	counts := [][]int{{1, 2}, {1, 2}, {1, 3}}
	for r, want := range []int{2, 2, 0} {
		e := SharedCountsMismatch(5, r, counts)
		if e == nil || e.Peer != want || e.Field != "counts" {
			t.Fatalf("rank %d: %v, want it to name rank %d", r, e, want)
		}
	}
	if e := SharedCountsMismatch(5, 0, [][]int{{1}, {1}}); e != nil {
		t.Fatal(e)
	}
}
