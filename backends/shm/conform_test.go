package shm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
)

// The conformance suite: every case of the spec's table (collective x dtype
// x op) at counts 0, 1, odd, exactly one data buffer and 3.5 buffers, with
// out-of-place, in-place and zero-copy (heap) variants where they apply,
// checked bit for bit against an independent reference: an element-wise
// left-to-right fold written here (float32 accumulation for 16-bit floats,
// rounded once). The exact pass uses small integers, so that float results
// are exact; the random pass uses random finite values (the reference then
// reproduces the kernels' rounding order), and the ranks also compare a hash
// of everything they received.

// confBuffer is the data-buffer size of the suite: small, so that "exactly
// the buffer" and "3.5 buffers" exercise chunking and pipelining cheaply.
const confBuffer = 4096

// conformOptions: the whole suite runs with a small threshold (split
// allreduce above 1 KiB); the reducing collectives run again with direct
// allreduce at every size (directOnly).
func conformOptions(directOnly bool) []Option {
	small := 1024
	if directOnly {
		small = 1 << 30
	}
	return []Option{WithBufferSize(confBuffer), WithSmallThreshold(small), WithHeapSize(256 << 10), WithP2PBufferSize(4096)}
}

func confCounts(es int) []int {
	s := confBuffer / es
	return []int{0, 1, 33, 301, s, s * 7 / 2}
}

const (
	variantPlain = iota
	variantInPlace
	variantZeroCopy
)

func variantsOf(k core.Kind) []int {
	switch k {
	case coll.KindAllreduce, coll.KindReduce:
		return []int{variantPlain, variantInPlace, variantZeroCopy}
	case coll.KindAlltoall:
		return []int{variantPlain, variantInPlace}
	case coll.KindBroadcast, coll.KindAllgather, coll.KindGather:
		return []int{variantPlain, variantZeroCopy}
	}
	return []int{variantPlain}
}

// runConformance runs the whole suite on one rank; st carries the hashes.
func runConformance(ctx context.Context, b *Backend, st core.Store, random, directOnly bool) error {
	n, me := b.Size(), b.Rank()
	b.zcMin = 1 // read every heap input in place, however small
	h := sha256.New()
	cases := 0
	for ci, c := range confCases() {
		if c.Kind == coll.KindRecv || (c.Kind == coll.KindSend && n == 1) {
			continue // a send case runs both sides
		}
		if directOnly && c.Kind != coll.KindAllreduce && c.Kind != coll.KindReduce {
			continue
		}
		es := max(c.DType.Size(), 1)
		for si, count := range confCounts(es) {
			for _, v := range variantsOf(c.Kind) {
				root := (ci + si + v) % n
				seed := uint64(ci)<<32 | uint64(si)<<8 | uint64(v)
				if random {
					seed |= 1 << 63
				}
				if err := runCase(ctx, b, c, count, root, v, seed, random, h); err != nil {
					return fmt.Errorf("%v %v %v count=%d root=%d variant=%d random=%v: %w", c.Kind, c.DType, c.Op, count, root, v, random, err)
				}
				cases++
			}
		}
	}
	if !random || n == 1 {
		return nil
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := st.Set(ctx, "hash/"+strconv.Itoa(me), []byte(sum)); err != nil {
		return err
	}
	for j := 0; j < n; j++ {
		got, err := st.Get(ctx, "hash/"+strconv.Itoa(j))
		if err != nil {
			return err
		}
		if string(got) != sum {
			return fmt.Errorf("rank %d's results hash to %s, rank %d's to %s: ranks disagree", me, sum, j, got)
		}
	}
	return nil
}

// input is rank j's send buffer for a case: elements of dt, reproducible
// from seed on every rank.
func input(seed uint64, j int, dt core.DType, op core.Op, elems int, random bool) []byte {
	es := dt.Size()
	rng := rand.New(rand.NewPCG(seed, uint64(j)+1))
	out := make([]byte, elems*es)
	for i := 0; i < elems; i++ {
		switch dt {
		case coll.DTypeFloat32, coll.DTypeFloat64, coll.DTypeBFloat16, coll.DTypeFloat16:
			var f float64
			switch {
			case random:
				f = rng.Float64()*64 - 32
			case op == coll.OpProd:
				f = []float64{1, 2, -1, 1}[rng.IntN(4)]
			default:
				f = float64(rng.IntN(17) - 8)
			}
			putF(dt, out, i, f)
		default:
			putU(es, out, i, rng.Uint64())
		}
	}
	return out
}

func putF(dt core.DType, b []byte, i int, f float64) {
	switch dt {
	case coll.DTypeFloat32:
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(float32(f)))
	case coll.DTypeFloat64:
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(f))
	case coll.DTypeBFloat16:
		binary.LittleEndian.PutUint16(b[2*i:], uint16(coll.BFloat16FromFloat32(float32(f))))
	case coll.DTypeFloat16:
		binary.LittleEndian.PutUint16(b[2*i:], uint16(coll.Float16FromFloat32(float32(f))))
	}
}

func getF32(dt core.DType, b []byte, i int) float32 {
	switch dt {
	case coll.DTypeBFloat16:
		return coll.BFloat16(binary.LittleEndian.Uint16(b[2*i:])).Float32()
	case coll.DTypeFloat16:
		return coll.Float16(binary.LittleEndian.Uint16(b[2*i:])).Float32()
	}
	return math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
}

func putF32(dt core.DType, b []byte, i int, f float32) {
	switch dt {
	case coll.DTypeBFloat16:
		binary.LittleEndian.PutUint16(b[2*i:], uint16(coll.BFloat16FromFloat32(f)))
	case coll.DTypeFloat16:
		binary.LittleEndian.PutUint16(b[2*i:], uint16(coll.Float16FromFloat32(f)))
	default:
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
}

func getU(es int, b []byte, i int) uint64 {
	switch es {
	case 1:
		return uint64(b[i])
	case 2:
		return uint64(binary.LittleEndian.Uint16(b[2*i:]))
	case 4:
		return uint64(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return binary.LittleEndian.Uint64(b[8*i:])
}

func putU(es int, b []byte, i int, v uint64) {
	switch es {
	case 1:
		b[i] = byte(v)
	case 2:
		binary.LittleEndian.PutUint16(b[2*i:], uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(b[4*i:], uint32(v))
	default:
		binary.LittleEndian.PutUint64(b[8*i:], v)
	}
}

// signExt interprets the low es bytes of v as a signed integer.
func signExt(es int, v uint64) int64 {
	sh := 64 - 8*uint(es)
	return int64(v<<sh) >> sh
}

func fminmax[T float32 | float64](isMin bool, a, b T, bits func(T) uint64, from func(uint64) T) T {
	switch {
	case isMin && a < b, !isMin && a > b:
		return a
	case isMin && b < a, !isMin && b > a:
		return b
	case a == b:
		if isMin {
			return from(bits(a) | bits(b))
		}
		return from(bits(a) & bits(b))
	}
	return a + b // NaN propagates
}

// refFold is the reference reduction of elems elements of srcs, in order.
func refFold(dt core.DType, op core.Op, nranks int, srcs [][]byte, elems int) []byte {
	es := dt.Size()
	out := make([]byte, elems*es)
	signed := dt == coll.DTypeInt8 || dt == coll.DTypeInt32 || dt == coll.DTypeInt64
	b32 := func(f float32) uint64 { return uint64(math.Float32bits(f)) }
	f32 := func(u uint64) float32 { return math.Float32frombits(uint32(u)) }
	for i := 0; i < elems; i++ {
		switch dt {
		case coll.DTypeFloat32, coll.DTypeBFloat16, coll.DTypeFloat16:
			acc := getF32(dt, srcs[0], i)
			for _, s := range srcs[1:] {
				v := getF32(dt, s, i)
				switch op {
				case coll.OpSum, coll.OpAvg:
					acc += v
				case coll.OpProd:
					acc *= v
				case coll.OpMin, coll.OpMax:
					acc = fminmax(op == coll.OpMin, acc, v, b32, f32)
				}
			}
			if op == coll.OpAvg {
				// The sum is rounded to dt first (kernels.Reduce's
				// result), then widened, divided and rounded again
				// (kernels.Finish).
				putF32(dt, out, i, acc)
				acc = getF32(dt, out, i) / float32(nranks)
			}
			putF32(dt, out, i, acc)
		case coll.DTypeFloat64:
			acc := math.Float64frombits(getU(8, srcs[0], i))
			for _, s := range srcs[1:] {
				v := math.Float64frombits(getU(8, s, i))
				switch op {
				case coll.OpSum, coll.OpAvg:
					acc += v
				case coll.OpProd:
					acc *= v
				case coll.OpMin, coll.OpMax:
					acc = fminmax(op == coll.OpMin, acc, v, math.Float64bits, math.Float64frombits)
				}
			}
			if op == coll.OpAvg {
				acc /= float64(nranks)
			}
			putU(8, out, i, math.Float64bits(acc))
		default:
			acc := getU(es, srcs[0], i)
			for _, s := range srcs[1:] {
				v := getU(es, s, i)
				switch op {
				case coll.OpSum:
					acc += v
				case coll.OpProd:
					acc *= v
				case coll.OpBAnd:
					acc &= v
				case coll.OpBOr:
					acc |= v
				case coll.OpBXor:
					acc ^= v
				case coll.OpMin, coll.OpMax:
					less := v < acc
					if signed {
						less = signExt(es, v) < signExt(es, acc)
					}
					greater := !less && v != acc
					if (op == coll.OpMin && less) || (op == coll.OpMax && greater) {
						acc = v
					}
				}
			}
			putU(es, out, i, acc)
		}
	}
	return out
}

const guard = 0xA5

// buffer returns a slice of size bytes filled with guard bytes, followed by
// 64 more guard bytes that no collective may touch.
func buffer(size int) []byte {
	b := bytes.Repeat([]byte{guard}, size+64)
	return b[:size]
}

func checkGuard(b []byte) error {
	for i, x := range b[len(b) : len(b)+64] {
		if x != guard {
			return fmt.Errorf("wrote past the end of a buffer (byte %d after it is %#x)", i, x)
		}
	}
	return nil
}

func runCase(ctx context.Context, b *Backend, c confCase, count, root, variant int, seed uint64, random bool, h interface{ Write([]byte) (int, error) }) error {
	n, me := b.Size(), b.Rank()
	es := max(c.DType.Size(), 1)
	sendElems, recvElems := count, count
	switch c.Kind {
	case coll.KindAllgather, coll.KindGather:
		recvElems = count * n
	case coll.KindReduceScatter, coll.KindScatter:
		sendElems = count * n
	case coll.KindAlltoall:
		sendElems, recvElems = count*n, count*n
	}
	in := make([][]byte, n)
	if c.Kind != coll.KindBarrier {
		for j := range in {
			in[j] = input(seed, j, c.DType, c.Op, sendElems, random)
		}
	}
	req := &core.Request{Kind: c.Kind, DType: c.DType, Op: c.Op, Count: count, Root: root}
	var send, recv []byte
	if c.Kind != coll.KindBarrier {
		if variant == variantZeroCopy {
			var err error
			if send, err = b.Alloc(sendElems * es); err != nil {
				return err
			}
			defer b.Free(send)
		} else {
			send = buffer(sendElems * es)
		}
		copy(send, in[me])
		recv = buffer(recvElems * es)
		if variant == variantInPlace {
			recv = send
		}
	}
	isRoot := me == root
	var want []byte
	switch c.Kind {
	case coll.KindAllreduce:
		req.Send, req.Recv = send, recv
		want = refFold(c.DType, c.Op, n, in, count)
	case coll.KindReduce:
		req.Send = send
		if isRoot {
			req.Recv = recv
			want = refFold(c.DType, c.Op, n, in, count)
		}
	case coll.KindBroadcast:
		req.Send, req.Recv = send, send
		recv = send
		want = in[root]
	case coll.KindAllgather, coll.KindGather:
		req.Send = send
		if c.Kind == coll.KindAllgather || isRoot {
			req.Recv = recv
			want = bytes.Join(in, nil)
		}
	case coll.KindReduceScatter:
		req.Send, req.Recv = send, recv
		blocks := make([][]byte, n)
		for j := range in {
			blocks[j] = in[j][me*count*es : (me+1)*count*es]
		}
		want = refFold(c.DType, c.Op, n, blocks, count)
	case coll.KindScatter:
		req.Recv = recv
		if isRoot {
			req.Send = send
		}
		want = in[root][me*count*es : (me+1)*count*es]
	case coll.KindAlltoall:
		req.Send, req.Recv = send, recv
		var w []byte
		for j := range in {
			w = append(w, in[j][me*count*es:(me+1)*count*es]...)
		}
		want = w
	case coll.KindBarrier:
		return b.Do(ctx, req)
	case coll.KindSend:
		return sendRing(ctx, b, c, count, in, send, recv, h)
	}
	if err := b.Do(ctx, req); err != nil {
		return err
	}
	if want == nil {
		return nil
	}
	if variant != variantInPlace && variant != variantZeroCopy && c.Kind != coll.KindBroadcast {
		if err := checkGuard(recv); err != nil {
			return err
		}
	}
	got := recv[:len(want)]
	if !bytes.Equal(got, want) {
		for i := 0; i < len(want); i += es {
			if !bytes.Equal(got[i:i+es], want[i:i+es]) {
				return fmt.Errorf("element %d of %d: got %x, want %x", i/es, len(want)/es, got[i:i+es], want[i:i+es])
			}
		}
	}
	switch c.Kind {
	case coll.KindAllreduce, coll.KindAllgather, coll.KindBroadcast:
		h.Write(got) // the same on every rank
	}
	return nil
}

// sendRing sends in[me] to the next rank and receives from the previous;
// even ranks send first, odd ranks receive first, so the ring cannot
// deadlock with rendezvous sends.
func sendRing(ctx context.Context, b *Backend, c confCase, count int, in [][]byte, send, recv []byte, h interface{ Write([]byte) (int, error) }) error {
	n, me := b.Size(), b.Rank()
	next, prev := (me+1)%n, (me+n-1)%n
	s := &core.Request{Kind: coll.KindSend, DType: c.DType, Count: count, Peer: next, Send: send}
	r := &core.Request{Kind: coll.KindRecv, DType: c.DType, Count: count, Peer: prev, Recv: recv}
	order := []*core.Request{s, r}
	if me%2 == 1 {
		order = []*core.Request{r, s}
	}
	for _, q := range order {
		if err := b.Do(ctx, q); err != nil {
			return err
		}
	}
	if err := checkGuard(recv); err != nil {
		return err
	}
	if !bytes.Equal(recv, in[prev]) {
		return fmt.Errorf("received %d bytes from rank %d that differ from what it sent", len(recv), prev)
	}
	return nil
}

func TestConformanceGoroutines(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			for _, directOnly := range []bool{false, true} {
				for _, random := range []bool{false, true} {
					st := newSharedStore()
					mustOK(t, goRanks(t, n, conformOptions(directOnly), func(ctx context.Context, b *Backend) error {
						return runConformance(ctx, b, st, random, directOnly)
					}))
				}
			}
		})
	}
}

func conformBody(ctx context.Context, r *proctest.Rank) error {
	for _, directOnly := range []bool{false, true} {
		b, err := newProcBackend(ctx, r, fmt.Sprintf("shm%v/", directOnly), conformOptions(directOnly)...)
		if err != nil {
			return err
		}
		// The direct-only pass runs the random data only (it is checked
		// against the reference bit for bit as well), to keep CI short.
		passes := []bool{false, true}
		if directOnly {
			passes = []bool{true}
		}
		for _, random := range passes {
			if err := runConformance(ctx, b, core.WithPrefix(r.Store, fmt.Sprintf("conf%v%v/", directOnly, random)), random, directOnly); err != nil {
				b.Close()
				return err
			}
		}
		if err := b.Close(); err != nil {
			return err
		}
	}
	return nil
}

func TestConformanceProcesses(t *testing.T) {
	nps := []int{1, 2, 3, 4, 5, 6, 7, 8}
	if testing.Short() {
		nps = []int{2, 3}
	}
	for _, np := range nps {
		t.Run(strconv.Itoa(np), func(t *testing.T) {
			procRanks(t, "conform", np)
		})
	}
}

// confCase is one collective x dtype x op (0 where the collective has
// none) the suite runs.
type confCase struct {
	Kind  core.Kind
	DType core.DType
	Op    core.Op
}

// confCases lists every collective the runtime runs with every registered
// dtype and, where it reduces, every op of the dtype, by id.
func confCases() []confCase {
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
