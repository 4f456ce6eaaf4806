// Package tcptest checks a communicator against the spec: every collective
// x dtype x op of generated/coll's Cases, on data whose results are exact,
// compared bit for bit with a reference every rank computes for itself, and
// on random data (NaNs included) where every rank must end with the same
// bits. Each rank of a group calls Conformance with the same arguments.
//
// It lives beside backends/tcp so that the loopback tests, the real-process
// tests and the network-namespace tests (tests/netns) run the same checks.
package tcptest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// DefaultCounts are the per-rank element counts Conformance uses when none
// are given: empty, one element, and sizes that leave remainders when cut
// into blocks and chunks.
var DefaultCounts = []int{0, 1, 7, 33, 300}

// Conformance runs every case of cases() at each count on c and returns
// the first wrong result, naming the case. seed varies the data; every rank
// must pass the same seed and counts.
func Conformance(ctx context.Context, c core.Comm, seed uint64, counts []int) error {
	if counts == nil {
		counts = DefaultCounts
	}
	for ci, cs := range cases() {
		for _, count := range counts {
			if err := runCase(ctx, c, seed, ci, cs, count); err != nil {
				return fmt.Errorf("case %v/%v/%s count %d: %w", cs.Kind, cs.DType, opName(cs.Op), count, err)
			}
		}
	}
	return nil
}

func opName(o core.Op) string {
	if o == 0 {
		return "-"
	}
	return o.String()
}

// hash64 is a fixed mixing function (splitmix64) so that every rank derives
// the same data for every rank.
func hash64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// value is rank's element i of a case: a small integer, so that sums,
// products, minima and maxima are exact in every dtype (products use ±1,
// ±2 only: at most 2^8 with 8 ranks).
func value(seed uint64, ci, rank, i int, op core.Op) int64 {
	h := hash64(seed ^ uint64(ci)<<40 ^ uint64(rank)<<32 ^ uint64(i))
	if op == coll.OpProd {
		return []int64{-2, -1, 1, 2}[h%4]
	}
	return int64(h%9) - 4
}

// put stores v as element i of dt in b.
func put(dt core.DType, b []byte, i int, v int64) {
	le := binary.LittleEndian
	switch dt {
	case coll.DTypeFloat32:
		le.PutUint32(b[4*i:], math.Float32bits(float32(v)))
	case coll.DTypeFloat64:
		le.PutUint64(b[8*i:], math.Float64bits(float64(v)))
	case coll.DTypeBFloat16:
		le.PutUint16(b[2*i:], uint16(coll.BFloat16FromFloat32(float32(v))))
	case coll.DTypeFloat16:
		le.PutUint16(b[2*i:], uint16(coll.Float16FromFloat32(float32(v))))
	case coll.DTypeInt8, coll.DTypeUint8:
		b[i] = byte(v)
	case coll.DTypeInt32, coll.DTypeUint32:
		le.PutUint32(b[4*i:], uint32(v))
	case coll.DTypeInt64, coll.DTypeUint64:
		le.PutUint64(b[8*i:], uint64(v))
	default:
		panic(fmt.Sprintf("tcptest: dtype %v", dt))
	}
}

func isFloat(dt core.DType) bool {
	return dt == coll.DTypeFloat32 || dt == coll.DTypeFloat64 || dt == coll.DTypeBFloat16 || dt == coll.DTypeFloat16
}

func isSigned(dt core.DType) bool {
	return dt == coll.DTypeInt8 || dt == coll.DTypeInt32 || dt == coll.DTypeInt64
}

// raw returns element i of dt in b as stored, sign- or zero-extended.
func raw(dt core.DType, b []byte, i int) uint64 {
	le := binary.LittleEndian
	switch dt.Size() {
	case 1:
		if isSigned(dt) {
			return uint64(int64(int8(b[i])))
		}
		return uint64(b[i])
	case 4:
		if isSigned(dt) {
			return uint64(int64(int32(le.Uint32(b[4*i:]))))
		}
		return uint64(le.Uint32(b[4*i:]))
	}
	return le.Uint64(b[8*i:])
}

// reference computes element i of op over every rank's values, exactly,
// and stores it in dst as dt. vals[r] is rank r's value.
func reference(dt core.DType, op core.Op, vals []int64, dst []byte, i int) {
	n := len(vals)
	if isFloat(dt) {
		acc := float64(vals[0])
		for _, v := range vals[1:] {
			f := float64(v)
			switch op {
			case coll.OpSum, coll.OpAvg:
				acc += f
			case coll.OpProd:
				acc *= f
			case coll.OpMin:
				acc = math.Min(acc, f)
			case coll.OpMax:
				acc = math.Max(acc, f)
			}
		}
		if op == coll.OpAvg {
			// One division of the exact sum, rounded once, as the spec says.
			le := binary.LittleEndian
			switch dt {
			case coll.DTypeFloat32:
				le.PutUint32(dst[4*i:], math.Float32bits(float32(acc)/float32(n)))
			case coll.DTypeFloat64:
				le.PutUint64(dst[8*i:], math.Float64bits(acc/float64(n)))
			case coll.DTypeBFloat16:
				le.PutUint16(dst[2*i:], uint16(coll.BFloat16FromFloat32(float32(acc)/float32(n))))
			case coll.DTypeFloat16:
				le.PutUint16(dst[2*i:], uint16(coll.Float16FromFloat32(float32(acc)/float32(n))))
			}
			return
		}
		put(dt, dst, i, int64(acc))
		return
	}
	// Integers: work on the stored (wrapped) values in uint64; sums and
	// products wrap exactly as the dtype's do once truncated.
	var tmp [8]byte
	conv := func(v int64) uint64 { put(dt, tmp[:], 0, v); return raw(dt, tmp[:], 0) }
	acc := conv(vals[0])
	for _, v := range vals[1:] {
		x := conv(v)
		switch op {
		case coll.OpSum:
			acc += x
		case coll.OpProd:
			acc *= x
		case coll.OpMin:
			if (isSigned(dt) && int64(x) < int64(acc)) || (!isSigned(dt) && x < acc) {
				acc = x
			}
		case coll.OpMax:
			if (isSigned(dt) && int64(x) > int64(acc)) || (!isSigned(dt) && x > acc) {
				acc = x
			}
		case coll.OpBAnd:
			acc &= x
		case coll.OpBOr:
			acc |= x
		case coll.OpBXor:
			acc ^= x
		}
	}
	put(dt, dst, i, int64(acc))
}

// fill writes rank's values for elements [0, count) of a case into b
// (starting at element offset off of the rank's data).
func fill(dt core.DType, op core.Op, b []byte, seed uint64, ci, rank, off, count int) {
	for i := range count {
		put(dt, b, i, value(seed, ci, rank, off+i, op))
	}
}

// garbage fills b with a pattern no correct result has, so that an output
// the collective forgot to write is caught.
func garbage(b []byte) {
	for i := range b {
		b[i] = 0xA5
	}
}

func diff(what string, got, want []byte, es int) error {
	for i := range want {
		if got[i] != want[i] {
			return fmt.Errorf("%s: element %d is %x, want %x", what, i/es, got[i/es*es:i/es*es+es], want[i/es*es:i/es*es+es])
		}
	}
	return nil
}

func runCase(ctx context.Context, c core.Comm, seed uint64, ci int, cs confCase, count int) error {
	n, r := c.Size(), c.Rank()
	dt, op := cs.DType, cs.Op
	es := dt.Size()
	bs := count * es
	root := (ci + count) % n
	req := &core.Request{Kind: cs.Kind, DType: dt, Op: op, Count: count}
	vals := make([]int64, n)
	// ref computes the reduction of every rank's elements [off, off+cnt).
	ref := func(off, cnt int) []byte {
		out := make([]byte, cnt*es)
		for i := range cnt {
			for q := range n {
				vals[q] = value(seed, ci, q, off+i, op)
			}
			reference(dt, op, vals, out, i)
		}
		return out
	}
	data := func(q, off, cnt int) []byte {
		b := make([]byte, cnt*es)
		fill(dt, op, b, seed, ci, q, off, cnt)
		return b
	}
	switch cs.Kind {
	case coll.KindAllreduce:
		req.Send, req.Recv = data(r, 0, count), make([]byte, bs)
		garbage(req.Recv)
		if err := c.Do(ctx, req); err != nil {
			return err
		}
		if err := diff("recv", req.Recv, ref(0, count), es); err != nil {
			return err
		}
		// In place, and on random bits: every rank must agree.
		rnd := randomBytes(seed^0xabcdef, ci, count*es)
		req.Send, req.Recv = rnd, rnd
		if err := c.Do(ctx, req); err != nil {
			return err
		}
		return agree(ctx, c, rnd)
	case coll.KindReduce:
		req.Root = root
		req.Send = data(r, 0, count)
		if r == root {
			req.Recv = make([]byte, bs)
			garbage(req.Recv)
		}
		if err := c.Do(ctx, req); err != nil {
			return err
		}
		if r == root {
			return diff("recv", req.Recv, ref(0, count), es)
		}
		return nil
	case coll.KindBroadcast:
		req.Root = root
		buf := data(r, 0, count)
		if r != root {
			garbage(buf)
		}
		req.Send, req.Recv = buf, buf
		if err := c.Do(ctx, req); err != nil {
			return err
		}
		return diff("buf", buf, data(root, 0, count), es)
	case coll.KindAllgather:
		req.Send, req.Recv = data(r, 0, count), make([]byte, n*bs)
		garbage(req.Recv)
		if err := c.Do(ctx, req); err != nil {
			return err
		}
		for q := range n {
			if err := diff(fmt.Sprintf("recv block %d", q), req.Recv[q*bs:(q+1)*bs], data(q, 0, count), es); err != nil {
				return err
			}
		}
		return nil
	case coll.KindReduceScatter:
		req.Send, req.Recv = data(r, 0, n*count), make([]byte, bs)
		garbage(req.Recv)
		if err := c.Do(ctx, req); err != nil {
			return err
		}
		return diff("recv", req.Recv, ref(r*count, count), es)
	case coll.KindGather:
		req.Root = root
		req.Send = data(r, 0, count)
		if r == root {
			req.Recv = make([]byte, n*bs)
			garbage(req.Recv)
		}
		if err := c.Do(ctx, req); err != nil {
			return err
		}
		if r == root {
			for q := range n {
				if err := diff(fmt.Sprintf("recv block %d", q), req.Recv[q*bs:(q+1)*bs], data(q, 0, count), es); err != nil {
					return err
				}
			}
		}
		return nil
	case coll.KindScatter:
		req.Root = root
		if r == root {
			req.Send = data(r, 0, n*count)
		}
		req.Recv = make([]byte, bs)
		garbage(req.Recv)
		if err := c.Do(ctx, req); err != nil {
			return err
		}
		return diff("recv", req.Recv, data(root, r*count, count), es)
	case coll.KindAlltoall:
		req.Send, req.Recv = data(r, 0, n*count), make([]byte, n*bs)
		garbage(req.Recv)
		if err := c.Do(ctx, req); err != nil {
			return err
		}
		for q := range n {
			if err := diff(fmt.Sprintf("recv block %d", q), req.Recv[q*bs:(q+1)*bs], data(q, r*count, count), es); err != nil {
				return err
			}
		}
		return nil
	case coll.KindBarrier:
		return c.Do(ctx, req)
	case coll.KindSend:
		// A token ring: rank 0 sends first, every other rank receives
		// first, so no rank waits on a send nobody reads.
		if n == 1 {
			return nil
		}
		next, prev := (r+1)%n, (r+n-1)%n
		out := data(r, 0, count)
		in := make([]byte, bs)
		garbage(in)
		sreq := &core.Request{Kind: coll.KindSend, DType: dt, Count: count, Peer: next, Send: out}
		rreq := &core.Request{Kind: coll.KindRecv, DType: dt, Count: count, Peer: prev, Recv: in}
		first, second := rreq, sreq
		if r == 0 {
			first, second = sreq, rreq
		}
		if err := c.Do(ctx, first); err != nil {
			return err
		}
		if err := c.Do(ctx, second); err != nil {
			return err
		}
		return diff("recv", in, data(prev, 0, count), es)
	case coll.KindRecv:
		return nil // exercised with KindSend
	}
	return fmt.Errorf("tcptest: no check for collective %v", cs.Kind)
}

func randomBytes(seed uint64, ci, n int) []byte {
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], hash64(seed^uint64(ci)<<32^uint64(i)))
	}
	return b[:n]
}

// agree checks that every rank holds the same bytes in buf: ranks exchange
// a digest with an allgather (itself checked against the reference).
func agree(ctx context.Context, c core.Comm, buf []byte) error {
	sum := sha256.Sum256(buf)
	n := c.Size()
	all := make([]byte, 32*n)
	req := &core.Request{Kind: coll.KindAllgather, DType: coll.DTypeUint8, Count: 32, Send: sum[:], Recv: all}
	if err := c.Do(ctx, req); err != nil {
		return fmt.Errorf("exchanging digests: %w", err)
	}
	for q := range n {
		if string(all[q*32:(q+1)*32]) != string(sum[:]) {
			return fmt.Errorf("rank %d's result differs from rank %d's (random data)", q, c.Rank())
		}
	}
	return nil
}

// confCase is one collective x dtype x op (0 where the collective has
// none) the suite runs.
type confCase struct {
	Kind  core.Kind
	DType core.DType
	Op    core.Op
}

// cases lists every collective the runtime runs with every registered
// dtype and, where it reduces, every op of the dtype, by id.
func cases() []confCase {
	var cs []confCase
	for _, k := range core.Kinds() {
		sh := k.Shape()
		if sh.Send == core.None && sh.Recv == core.None {
			cs = append(cs, confCase{Kind: k})
			continue
		}
		for _, t := range core.Types() {
			if !sh.Op {
				cs = append(cs, confCase{Kind: k, DType: t.ID})
				continue
			}
			for _, o := range t.Ops() {
				cs = append(cs, confCase{Kind: k, DType: t.ID, Op: o.ID})
			}
		}
	}
	return cs
}
