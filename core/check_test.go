package core

import (
	"errors"
	"math"
	"testing"
	"unsafe"

	"github.com/gocoll/gocoll/kernel"
)

// Test dtypes and ops, registered under ids no spec of gocoll's uses.
const (
	tInt32 DType = 250 // 4 bytes, ops sum and bxor
	tHalf  DType = 251 // 2 bytes, op avg
	oSum   Op    = 250
	oXor   Op    = 251
	oAvg   Op    = 252
)

func noop(dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int) {}

func init() {
	RegisterType(&Type{ID: tInt32, Name: "test_int32", Size: 4, Class: ClassInt})
	RegisterType(&Type{ID: tHalf, Name: "test_half", Size: 2, Class: ClassFloat, ExpBits: 5, MantBits: 10,
		Divide: func(p unsafe.Pointer, n, nranks int) {}})
	RegisterOp(&OpInfo{ID: oSum, Name: "test_sum"})
	RegisterOp(&OpInfo{ID: oXor, Name: "test_xor"})
	RegisterOp(&OpInfo{ID: oAvg, Name: "test_avg", Finish: FinishDivide})
	RegisterKernel(tInt32, oSum, kernel.Impl{kernel.Generic: noop})
	RegisterKernel(tInt32, oXor, kernel.Impl{kernel.Generic: noop})
	RegisterKernel(tHalf, oAvg, kernel.Impl{kernel.Generic: noop})
}

func TestCheckAccepts(t *testing.T) {
	buf := make([]byte, 4*3*4)
	cases := []struct {
		name       string
		req        Request
		rank, size int
	}{
		{"allreduce", Request{Kind: KindAllreduce, DType: tInt32, Op: oSum, Count: 3, Send: buf[:12], Recv: buf[12:24]}, 0, 4},
		{"allreduce in place", Request{Kind: KindAllreduce, DType: tInt32, Op: oSum, Count: 3, Send: buf[:12], Recv: buf[:12]}, 0, 4},
		{"reduce off root", Request{Kind: KindReduce, DType: tInt32, Op: oSum, Count: 3, Root: 1, Send: buf[:12]}, 0, 4},
		{"broadcast one buffer", Request{Kind: KindBroadcast, DType: tHalf, Count: 6, Root: 3, Recv: buf[:12]}, 0, 4},
		{"allgather", Request{Kind: KindAllgather, DType: tInt32, Count: 1, Send: buf[:4], Recv: buf[4:20]}, 2, 4},
		{"scatter off root", Request{Kind: KindScatter, DType: tInt32, Count: 1, Root: 0, Recv: buf[:4]}, 2, 4},
		{"alltoall in place", Request{Kind: KindAlltoall, DType: tInt32, Count: 3, Send: buf, Recv: buf}, 2, 4},
		{"send", Request{Kind: KindSend, DType: tInt32, Count: 2, Peer: 3, Send: buf[:8]}, 2, 4},
		{"barrier ignores the rest", Request{Kind: KindBarrier, DType: 99, Count: 7, Send: buf}, 2, 4},
		{"zero count", Request{Kind: KindAllreduce, DType: tHalf, Op: oAvg}, 0, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := c.req
			if err := Check(&req, c.rank, c.size); err != nil {
				t.Fatal(err)
			}
			sh := req.Kind.Shape()
			if req.Kind != KindBarrier && req.Type == nil {
				t.Error("Type not resolved")
			}
			if sh.Op != (req.Kernel != nil) {
				t.Errorf("Kernel %v for a kind with op=%v", req.Kernel, sh.Op)
			}
			if sh.SendIsRecv && unsafe.SliceData(req.Send) != unsafe.SliceData(req.Recv) {
				t.Error("broadcast's Send not set to Recv")
			}
		})
	}
}

func TestCheckRefuses(t *testing.T) {
	buf := make([]byte, 64)
	cases := []struct {
		name       string
		req        *Request
		rank, size int
		want       error
	}{
		{"nil", nil, 0, 1, ErrInvalid},
		{"unknown kind", &Request{Kind: 200}, 0, 1, ErrUnsupported},
		{"unregistered dtype", &Request{Kind: KindAllgather, DType: 249}, 0, 1, ErrUnsupported},
		{"op the dtype lacks", &Request{Kind: KindAllreduce, DType: tHalf, Op: oSum}, 0, 1, ErrUnsupported},
		{"no op", &Request{Kind: KindAllreduce, DType: tInt32}, 0, 1, ErrUnsupported},
		{"negative count", &Request{Kind: KindAllgather, DType: tInt32, Count: -1}, 0, 1, ErrInvalid},
		{"count whose bytes wrap", &Request{Kind: KindAllgather, DType: tInt32, Count: 1<<62 + 8, Send: buf[:32], Recv: buf[32:]}, 0, 1, ErrInvalid},
		{"count*size wraps", &Request{Kind: KindAllgather, DType: tInt32, Count: math.MaxInt / 8, Send: buf[:32], Recv: buf[32:]}, 0, 4, ErrInvalid},
		{"short recv", &Request{Kind: KindAllreduce, DType: tInt32, Op: oSum, Count: 2, Send: buf[:8], Recv: buf[8:12]}, 0, 2, ErrBufferLength},
		{"long send", &Request{Kind: KindAllreduce, DType: tInt32, Op: oSum, Count: 2, Send: buf[:12], Recv: buf[16:24]}, 0, 2, ErrBufferLength},
		{"allgather recv of one block", &Request{Kind: KindAllgather, DType: tInt32, Count: 2, Send: buf[:8], Recv: buf[8:16]}, 0, 2, ErrBufferLength},
		{"root out of range", &Request{Kind: KindBroadcast, DType: tInt32, Count: 1, Root: 2, Recv: buf[:4]}, 0, 2, ErrInvalid},
		{"negative root", &Request{Kind: KindGather, DType: tInt32, Count: 1, Root: -1, Send: buf[:4]}, 0, 2, ErrInvalid},
		{"peer is self", &Request{Kind: KindSend, DType: tInt32, Count: 1, Peer: 1, Send: buf[:4]}, 1, 2, ErrInvalid},
		{"peer out of range", &Request{Kind: KindRecv, DType: tInt32, Count: 1, Peer: 5, Recv: buf[:4]}, 1, 2, ErrInvalid},
		{"partial overlap", &Request{Kind: KindAllreduce, DType: tInt32, Op: oSum, Count: 2, Send: buf[:8], Recv: buf[4:12]}, 0, 2, ErrInvalid},
		{"in place where not allowed", &Request{Kind: KindReduceScatter, DType: tInt32, Op: oSum, Count: 1, Send: buf[:8], Recv: buf[:4]}, 0, 2, ErrInvalid},
		{"broadcast with a second buffer", &Request{Kind: KindBroadcast, DType: tInt32, Count: 1, Send: buf[:4], Recv: buf[4:8]}, 0, 2, ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Check(c.req, c.rank, c.size)
			if !errors.Is(err, c.want) {
				t.Fatalf("Check = %v, want an error wrapping %v", err, c.want)
			}
		})
	}
}

// refRule is the request rule written out plainly, independent of Check's
// shape-driven code: what FuzzCheck holds Check to.
func refRule(req Request, rank, size int) bool {
	if req.Kind < KindAllreduce || req.Kind > KindRecv {
		return false
	}
	if req.Kind == KindBarrier {
		return true
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
	switch req.Kind {
	case KindAllreduce, KindReduce, KindReduceScatter:
		ok := (req.DType == tInt32 && (req.Op == oSum || req.Op == oXor)) || (req.DType == tHalf && req.Op == oAvg)
		if !ok {
			return false
		}
	}
	rooted := req.Kind == KindReduce || req.Kind == KindBroadcast || req.Kind == KindGather || req.Kind == KindScatter
	if rooted && (req.Root < 0 || req.Root >= size) {
		return false
	}
	if req.Kind == KindSend || req.Kind == KindRecv {
		if req.Peer < 0 || req.Peer >= size || req.Peer == rank {
			return false
		}
	}
	if req.Count < 0 || uint64(req.Count)*uint64(es)*uint64(size) > math.MaxInt || req.Count > math.MaxInt/es/size {
		return false
	}
	one := req.Count * es
	all := one * size
	root := rank == req.Root
	var send, recv = -1, -1 // required lengths; -1: ignored
	inPlace := false
	switch req.Kind {
	case KindAllreduce:
		send, recv, inPlace = one, one, true
	case KindReduce:
		send, inPlace = one, true
		if root {
			recv = one
		}
	case KindBroadcast:
		if len(req.Send) != 0 && !(len(req.Send) == len(req.Recv) && unsafe.SliceData(req.Send) == unsafe.SliceData(req.Recv)) {
			return false
		}
		return len(req.Recv) == one
	case KindAllgather:
		send, recv = one, all
	case KindReduceScatter:
		send, recv = all, one
	case KindGather:
		send = one
		if root {
			recv = all
		}
	case KindScatter:
		recv = one
		if root {
			send = all
		}
	case KindAlltoall:
		send, recv, inPlace = all, all, true
	case KindSend:
		send = one
	case KindRecv:
		recv = one
	}
	if send >= 0 && len(req.Send) != send || recv >= 0 && len(req.Recv) != recv {
		return false
	}
	if send > 0 && recv > 0 {
		s, r := uintptr(unsafe.Pointer(unsafe.SliceData(req.Send))), uintptr(unsafe.Pointer(unsafe.SliceData(req.Recv)))
		if s == r && len(req.Send) == len(req.Recv) {
			return inPlace
		}
		if s < r+uintptr(len(req.Recv)) && r < s+uintptr(len(req.Send)) {
			return false
		}
	}
	return true
}

// FuzzCheck draws requests of every field, with buffers that are windows
// of one arena (so that they may overlap), and holds Check to refRule:
// it must never panic and must accept exactly what the rule accepts.
func FuzzCheck(f *testing.F) {
	f.Add(uint8(1), uint8(250), uint8(250), int64(3), int64(0), int64(0), uint16(0), uint16(12), uint16(12), uint16(12), uint8(0), uint8(4))
	f.Add(uint8(4), uint8(250), uint8(0), int64(1<<62+8), int64(0), int64(0), uint16(0), uint16(32), uint16(32), uint16(32), uint8(0), uint8(1))
	f.Add(uint8(10), uint8(251), uint8(0), int64(2), int64(0), int64(1), uint16(0), uint16(4), uint16(0), uint16(0), uint8(1), uint8(2))
	f.Add(uint8(3), uint8(251), uint8(0), int64(2), int64(1), int64(0), uint16(0), uint16(4), uint16(0), uint16(4), uint8(0), uint8(2))
	arena := make([]byte, 1<<12)
	f.Fuzz(func(t *testing.T, kind, dt, op uint8, count, root, peer int64, sOff, sLen, rOff, rLen uint16, rank, size uint8) {
		n := int(size%9) + 1
		me := int(rank) % n
		win := func(off, l uint16) []byte {
			if l == 0 {
				return nil
			}
			o, e := int(off)%len(arena), int(off)%len(arena)+int(l)
			if e > len(arena) {
				e = len(arena)
			}
			return arena[o:e]
		}
		req := Request{Kind: Kind(kind), DType: DType(dt), Op: Op(op), Count: int(count), Root: int(root), Peer: int(peer),
			Send: win(sOff, sLen), Recv: win(rOff, rLen)}
		want := refRule(req, me, n)
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
