// Package kv is a backend that runs every collective through the
// rendezvous store: each rank publishes its contribution under keys of the
// collective's sequence number and reads what it needs from the others.
//
// It is slow (every byte crosses the store server twice) but simple enough
// to be obviously correct, so it serves as the reference the fast
// backends (shm, tcp) are tested against, and as the fallback where they
// cannot run. It reduces with the request's kernel, as they do, so its
// numerics are the same as theirs bit for bit.
//
// Every collective is also a rendezvous: each rank publishes a header
// (kind, dtype, op, count, root, or that it refused its own call) and
// waits for every other rank's. That is where disagreements are caught
// (every rank returns a *core.MismatchError) and where a rank that never
// comes is named in a *core.PeerError.
//
// A Backend is driven through a core.Guard, which checks each request
// once and runs one call at a time; Run trusts what it is handed.
package kv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/store"
)

// Option configures New.
type Option func(*Backend)

// WithChunkSize splits values larger than n bytes over several keys
// (default 1 MiB), keeping every store frame well below its limit.
func WithChunkSize(n int) Option {
	return func(b *Backend) {
		if n > 0 {
			b.chunk = n
		}
	}
}

// batchBytes bounds the payload of one MultiSet or MultiGet.
const batchBytes = 4 << 20

// noticeTimeout bounds how long Abort spends telling the peers through
// the store: it must return even when the store is gone.
const noticeTimeout = 5 * time.Second

// Backend runs collectives through a core.Store. It implements
// core.Backend.
type Backend struct {
	g     core.Group
	s     core.Store
	chunk int

	live   bool     // ranks hold ephemeral "alive/<rank>" keys (the store supports them)
	guards []string // every rank's alive key, by rank

	// The state of the calls, which the Guard runs one at a time.
	seq     uint64
	written [2][]string    // keys this rank wrote in the last two collectives
	sendSeq map[int]uint64 // next send sequence number per peer
	recvSeq map[int]uint64 // next recv sequence number per peer

	mu      sync.Mutex
	cancel  context.CancelCauseFunc // ends the call in flight; nil between calls
	aborted error                   // the cause Abort was given
}

var _ core.Backend = (*Backend)(nil)

// New builds a kv backend for group g. Every rank of g calls it; it
// returns once all of them have, or with a *core.PeerError naming the
// ranks that did not come before ctx ended or g.Timeout passed.
func New(ctx context.Context, g core.Group, opts ...Option) (*Backend, error) {
	if g.Size < 1 || g.Rank < 0 || g.Rank >= g.Size {
		return nil, fmt.Errorf("kv: rank %d of %d is not a valid group position", g.Rank, g.Size)
	}
	if g.Store == nil {
		return nil, errors.New("kv: the group has no store")
	}
	b := &Backend{g: g, s: g.Store, chunk: 1 << 20, sendSeq: map[int]uint64{}, recvSeq: map[int]uint64{}}
	for _, o := range opts {
		o(b)
	}
	ctx, cancel := context.WithDeadline(ctx, core.Deadline(ctx, g.Timeout))
	defer cancel()
	// An ephemeral key that lives as long as this rank's store
	// connection: peers waiting for this rank stop waiting when it dies.
	live, err := store.SetEphemeralIn(ctx, b.s, aliveKey(g.Rank), nil)
	if err != nil {
		return nil, fmt.Errorf("kv: announcing rank %d: %w", g.Rank, err)
	}
	if live {
		b.live = true
		b.guards = rankKeys("alive/", g.Size)
	}
	if err := b.s.Set(ctx, "hello/"+strconv.Itoa(g.Rank), nil); err != nil {
		return nil, fmt.Errorf("kv: announcing rank %d: %w", g.Rank, err)
	}
	keys := rankKeys("hello/", g.Size)
	if err := store.WaitFor(ctx, b.s, keys...); err != nil {
		return nil, b.peerError(ctx, "kv setup", keys, err)
	}
	return b, nil
}

// Name implements core.Backend.
func (b *Backend) Name() string { return "kv" }

// Rank implements core.Backend.
func (b *Backend) Rank() int { return b.g.Rank }

// Size implements core.Backend.
func (b *Backend) Size() int { return b.g.Size }

// Close implements core.Backend: a call still in flight ends with
// core.ErrClosed. It does not wait for peers; keys of the last
// collectives stay in the store, which dies with the job.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cancel != nil {
		b.cancel(core.ErrClosed)
	}
	return nil
}

// ErrPeerGone is the cause in a *core.PeerError for ranks whose store
// connection closed while others waited for them: the process exited or
// crashed.
var ErrPeerGone = errors.New("kv: the rank's store connection closed (its process exited or crashed)")

// ErrPeerAborted is the cause in a *core.PeerError for ranks whose calls
// were aborted (core.Backend's Abort): the error says why.
var ErrPeerAborted = errors.New("kv: the rank aborted its calls")

// Abort implements core.Backend. The call in flight and every later one
// fail with an error wrapping cause. The peers learn of it through the
// store: this rank records the cause and gives up its "alive" key, so
// their waits for it end at once where the store guards waits (the TCP
// store does), and at their timeout elsewhere.
func (b *Backend) Abort(cause error) {
	b.mu.Lock()
	if b.aborted != nil {
		b.mu.Unlock()
		return
	}
	b.aborted = cause
	if b.cancel != nil {
		b.cancel(cause)
	}
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), min(core.Timeout(b.g.Timeout), noticeTimeout))
	defer cancel()
	// Best effort: a store that is gone has told the peers already.
	b.s.Set(ctx, abortKey(b.g.Rank), []byte(cause.Error()))
	if b.live {
		b.s.Delete(ctx, aliveKey(b.g.Rank))
	}
}

// begin starts a call: it bounds ctx by the group's timeout and lets
// Abort and Close end it.
func (b *Backend) begin(ctx context.Context) (context.Context, func(), error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.aborted != nil {
		return nil, nil, fmt.Errorf("kv: the backend was aborted: %w", b.aborted)
	}
	ctx, stop := context.WithDeadline(ctx, core.Deadline(ctx, b.g.Timeout))
	ctx, cancel := context.WithCancelCause(ctx)
	b.cancel = cancel
	return ctx, func() {
		b.mu.Lock()
		b.cancel = nil
		b.mu.Unlock()
		cancel(nil)
		stop()
	}, nil
}

// ended turns err, the failure of a call whose ctx Abort or Close ended,
// into one that wraps their cause.
func ended(ctx context.Context, what string, err error) error {
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); cause != nil && ctx.Err() == context.Canceled && cause != context.Canceled {
		return fmt.Errorf("kv: %s: %w", what, cause)
	}
	return err
}

// Run implements core.Backend.
func (b *Backend) Run(ctx context.Context, req *core.Request) error {
	ctx, done, err := b.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	switch req.Kind {
	case core.KindSend:
		err = b.send(ctx, req, false)
	case core.KindRecv:
		err = b.recv(ctx, req, false)
	default:
		err = b.collective(ctx, req, false)
	}
	return ended(ctx, req.Kind.String(), err)
}

// Refuse implements core.Backend. In a collective this rank publishes a
// header that says it refused, and waits for the others' as in any
// collective, so that every rank leaves the call together; a refused send
// tells its receiver the same way. A refused recv has no one to tell:
// sends do not wait for their receiver.
func (b *Backend) Refuse(ctx context.Context, req *core.Request) error {
	ctx, done, err := b.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	switch req.Kind {
	case core.KindSend, core.KindRecv:
		if req.Peer < 0 || req.Peer >= b.g.Size || req.Peer == b.g.Rank {
			return nil // no peer of this group waits for the call
		}
		if req.Kind == core.KindSend {
			err = b.send(ctx, req, true)
		} else {
			err = b.recv(ctx, req, true)
		}
	default:
		err = b.collective(ctx, req, true)
	}
	return ended(ctx, req.Kind.String()+" (refused)", err)
}

func rankKeys(prefix string, n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = prefix + strconv.Itoa(i)
	}
	return ks
}

func aliveKey(r int) string { return "alive/" + strconv.Itoa(r) }
func abortKey(r int) string { return "abort/" + strconv.Itoa(r) }

// peerError turns a failed wait on keys (one per rank) into an error
// naming the ranks whose keys are missing.
func (b *Backend) peerError(ctx context.Context, op string, keys []string, err error) error {
	if ctx.Err() == nil {
		// The store itself failed (connection lost): no rank to blame.
		return fmt.Errorf("kv: %s: %w", op, err)
	}
	return &core.PeerError{Op: op, Ranks: store.Missing(ctx, b.s, keys...), Err: ctx.Err()}
}

// goneError names the ranks whose "alive/<rank>" keys are lost: those
// that recorded an abort as aborted, the others as gone.
func (b *Backend) goneError(ctx context.Context, op string, lost []string) error {
	var gone, aborted []int
	var why []string
	for _, k := range lost {
		r, err := strconv.Atoi(strings.TrimPrefix(k, "alive/"))
		if err != nil {
			continue
		}
		if cause, ok := b.abortCause(ctx, r); ok {
			aborted = append(aborted, r)
			why = append(why, fmt.Sprintf("rank %d: %s", r, cause))
		} else {
			gone = append(gone, r)
		}
	}
	if len(aborted) > 0 {
		return &core.PeerError{Op: op, Ranks: aborted, Err: fmt.Errorf("%w (%s)", ErrPeerAborted, strings.Join(why, "; "))}
	}
	return &core.PeerError{Op: op, Ranks: gone, Err: ErrPeerGone}
}

// abortCause reads what rank r recorded when it aborted. Abort records
// it before it gives up its alive key, so a rank whose key is lost either
// has a cause there already or died.
func (b *Backend) abortCause(ctx context.Context, r int) (string, bool) {
	t, ok := b.s.(interface {
		TryGet(context.Context, string) ([]byte, bool, error)
	})
	if !ok {
		return "", false
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), noticeTimeout)
	defer cancel()
	v, found, err := t.TryGet(ctx, abortKey(r))
	return string(v), found && err == nil
}

// header is what every rank publishes for a collective, and a sender for
// a send.
type header struct {
	kind    core.Kind
	dtype   core.DType
	op      core.Op
	refused bool  // the rank's own call failed its check: it moves no data
	count   int64 // a vector collective's: its counts' digest
	root    int64
	// vectors are a vector collective's counts vectors (vcoll.go).
	vectors [][]int
}

const headerLen = 4 + 8 + 8

func headerOf(req *core.Request, refused bool) *header {
	h := &header{kind: req.Kind, dtype: req.DType, op: req.Op, refused: refused, count: int64(req.Count), root: int64(req.Root)}
	if !refused {
		vectorHeader(h, req)
	}
	return h
}

func (h *header) encode() []byte {
	b := []byte{byte(h.kind), byte(h.dtype), byte(h.op), 0}
	if h.refused {
		b[3] = 1
	}
	b = binary.BigEndian.AppendUint64(b, uint64(h.count))
	b = binary.BigEndian.AppendUint64(b, uint64(h.root))
	for _, v := range h.vectors {
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		for _, c := range v {
			b = binary.BigEndian.AppendUint64(b, uint64(c))
		}
	}
	return b
}

func decodeHeader(v []byte) (*header, error) {
	if len(v) < headerLen || v[3] > 1 {
		return nil, fmt.Errorf("kv: a header of %d bytes, want %d or more: is another job using this store prefix?", len(v), headerLen)
	}
	h := &header{
		kind: core.Kind(v[0]), dtype: core.DType(v[1]), op: core.Op(v[2]), refused: v[3] == 1,
		count: int64(binary.BigEndian.Uint64(v[4:])), root: int64(binary.BigEndian.Uint64(v[12:])),
	}
	for rest := v[headerLen:]; len(rest) > 0; {
		if len(rest) < 4 || uint64(len(rest)-4) < 8*uint64(binary.BigEndian.Uint32(rest)) {
			return nil, fmt.Errorf("kv: a header with a malformed counts vector: is another job using this store prefix?")
		}
		vec := make([]int, binary.BigEndian.Uint32(rest))
		rest = rest[4:]
		for i := range vec {
			vec[i] = int(binary.BigEndian.Uint64(rest[8*i:]))
		}
		rest = rest[8*len(vec):]
		h.vectors = append(h.vectors, vec)
	}
	return h, nil
}

// String describes the call h stands for, for a peer's error.
func (h *header) String() string {
	return core.Describe(h.kind, h.dtype, h.op, int64(h.count), int64(h.root))
}

// disagree compares mine with theirs on every field that must agree.
func disagree(seq uint64, me, peer int, mine, theirs *header) *core.MismatchError {
	e := &core.MismatchError{Seq: seq, Rank: me, Peer: peer}
	switch {
	case theirs.refused:
		e.Field, e.Mine, e.Theirs = "argument", mine.String(), theirs.String()
	case mine.kind != theirs.kind:
		e.Field, e.Mine, e.Theirs = "kind", mine.kind.String(), theirs.kind.String()
	case mine.dtype != theirs.dtype:
		e.Field, e.Mine, e.Theirs = "dtype", mine.dtype.String(), theirs.dtype.String()
	case mine.op != theirs.op:
		e.Field, e.Mine, e.Theirs = "op", mine.op.String(), theirs.op.String()
	case mine.count != theirs.count:
		e.Field, e.Mine, e.Theirs = "count", strconv.FormatInt(mine.count, 10), strconv.FormatInt(theirs.count, 10)
	case mine.root != theirs.root:
		e.Field, e.Mine, e.Theirs = "root", strconv.FormatInt(mine.root, 10), strconv.FormatInt(theirs.root, 10)
	default:
		return nil
	}
	return e
}

// collective runs every kind except send and recv, or (refused) takes
// this rank's part in its rendezvous without data.
func (b *Backend) collective(ctx context.Context, req *core.Request, refused bool) error {
	b.seq++
	seq := b.seq
	me, n := b.g.Rank, b.g.Size
	pre := "c/" + strconv.FormatUint(seq, 10) + "/"
	op := fmt.Sprintf("%v #%d", req.Kind, seq)

	// Every rank has finished collective seq-2 once this rank has seen
	// all headers of seq-1, so this rank's keys from seq-2 can go.
	for _, k := range b.written[0] {
		if err := b.s.Delete(ctx, k); err != nil {
			return fmt.Errorf("kv: %s: cleaning up: %w", op, err)
		}
	}
	b.written[0], b.written[1] = b.written[1], nil

	// Publish data, then the header: a rank that sees the header finds
	// the data in place.
	mine := headerOf(req, refused)
	var sh *shape
	if !refused {
		sh = shapeOf(req)
		names, vals := sh.publish(req, me, n)
		for i := range names {
			names[i] = pre + "d/" + names[i]
		}
		keys, err := b.put(ctx, names, vals)
		b.written[1] = keys
		if err != nil {
			return fmt.Errorf("kv: %s: publishing: %w", op, err)
		}
	}
	hk := pre + "h/" + strconv.Itoa(me)
	if err := b.s.Set(ctx, hk, mine.encode()); err != nil {
		return fmt.Errorf("kv: %s: publishing the header: %w", op, err)
	}
	b.written[1] = append(b.written[1], hk)

	hkeys := rankKeys(pre+"h/", n)
	raw, lost, err := store.MultiGetGuardedFrom(ctx, b.s, hkeys, b.guards)
	if err != nil {
		return b.peerError(ctx, op, hkeys, err)
	}
	if lost != nil {
		return b.goneError(ctx, op, lost)
	}
	if refused {
		return nil
	}
	hs := make([]*header, n)
	for r, v := range raw {
		if hs[r], err = decodeHeader(v); err != nil {
			return err
		}
	}
	// A refusal first: it is why the others' fields may not fit.
	for r, hr := range hs {
		if hr.refused {
			return disagree(seq, me, r, mine, hr)
		}
	}
	for r, hr := range hs {
		if r != me {
			if e := disagree(seq, me, r, mine, hr); e != nil {
				if e.Field == "count" {
					// A vector collective's count is its counts' digest.
					if ve := vectorMismatch(seq, me, hs); ve != nil {
						return ve
					}
				}
				return e
			}
		}
	}
	if e := vectorMismatch(seq, me, hs); e != nil {
		return e
	}
	get := func(names []string, size int) ([][]byte, error) {
		for i := range names {
			names[i] = pre + "d/" + names[i]
		}
		vs, err := b.fetch(ctx, names, size)
		if err != nil {
			return nil, fmt.Errorf("kv: %s: fetching data: %w", op, err)
		}
		return vs, nil
	}
	return sh.complete(req, me, n, get)
}

// put writes each value under its name, split into chunks "name/0",
// "name/1", ...; it returns every key written.
func (b *Backend) put(ctx context.Context, names []string, vals [][]byte) ([]string, error) {
	var keys []string
	var bk []string
	var bv [][]byte
	size := 0
	flush := func() error {
		if len(bk) == 0 {
			return nil
		}
		err := store.MultiSetIn(ctx, b.s, bk, bv)
		bk, bv, size = nil, nil, 0
		return err
	}
	for i, name := range names {
		v := vals[i]
		for c := 0; c == 0 || c*b.chunk < len(v); c++ {
			part := v[c*b.chunk : min((c+1)*b.chunk, len(v))]
			if size+len(part) > batchBytes {
				if err := flush(); err != nil {
					return keys, err
				}
			}
			k := name + "/" + strconv.Itoa(c)
			bk, bv = append(bk, k), append(bv, part)
			keys = append(keys, k)
			size += len(part)
		}
	}
	return keys, flush()
}

// fetch reads the values published under names, each size bytes long.
func (b *Backend) fetch(ctx context.Context, names []string, size int) ([][]byte, error) {
	nchunks := max(1, (size+b.chunk-1)/b.chunk)
	out := make([][]byte, len(names))
	var keys []string
	var where []int // index into names for each key
	batch := 0
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		vs, err := store.MultiGetFrom(ctx, b.s, keys...)
		if err != nil {
			return err
		}
		for i, v := range vs {
			out[where[i]] = append(out[where[i]], v...)
		}
		keys, where, batch = nil, nil, 0
		return nil
	}
	for i, name := range names {
		for c := 0; c < nchunks; c++ {
			part := min(b.chunk, size-c*b.chunk)
			if batch+part > batchBytes {
				if err := flush(); err != nil {
					return nil, err
				}
			}
			keys = append(keys, name+"/"+strconv.Itoa(c))
			where = append(where, i)
			batch += part
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	for i, v := range out {
		if len(v) != size {
			return nil, fmt.Errorf("kv: %s holds %d bytes, want %d: is another job using this store prefix?", names[i], len(v), size)
		}
	}
	return out, nil
}

// p2pPrefix is where the n-th message from rank from to rank to lives.
func p2pPrefix(from, to int, n uint64) string {
	return "p/" + strconv.Itoa(from) + "/" + strconv.Itoa(to) + "/" + strconv.FormatUint(n, 10) + "/"
}

// send publishes req.Send for the peer, or (refused) a header that says
// this rank refused its send. It does not wait for the peer to receive
// (the store buffers it), so a pair of ranks can each Send and then Recv
// without deadlock.
func (b *Backend) send(ctx context.Context, req *core.Request, refused bool) error {
	n := b.sendSeq[req.Peer]
	b.sendSeq[req.Peer]++
	pre := p2pPrefix(b.g.Rank, req.Peer, n)
	if !refused {
		if _, err := b.put(ctx, []string{pre + "d"}, [][]byte{req.Send}); err != nil {
			return fmt.Errorf("kv: send #%d to rank %d: %w", n, req.Peer, err)
		}
	}
	if err := b.s.Set(ctx, pre+"h", headerOf(req, refused).encode()); err != nil {
		return fmt.Errorf("kv: send #%d to rank %d: %w", n, req.Peer, err)
	}
	return nil
}

// recv waits for the peer's matching send, copies it out and deletes it.
// A refused recv only keeps its place in the sequence of messages from
// the peer: the sender does not wait for it.
func (b *Backend) recv(ctx context.Context, req *core.Request, refused bool) error {
	n := b.recvSeq[req.Peer]
	b.recvSeq[req.Peer]++
	if refused {
		return nil
	}
	pre := p2pPrefix(req.Peer, b.g.Rank, n)
	op := fmt.Sprintf("recv #%d from rank %d", n, req.Peer)
	var guards []string
	if b.live {
		guards = []string{aliveKey(req.Peer)}
	}
	vs, lost, err := store.MultiGetGuardedFrom(ctx, b.s, []string{pre + "h"}, guards)
	if err != nil {
		if ctx.Err() != nil {
			return &core.PeerError{Op: op, Ranks: []int{req.Peer}, Err: ctx.Err()}
		}
		return fmt.Errorf("kv: %s: %w", op, err)
	}
	if lost != nil {
		return b.goneError(ctx, op, lost)
	}
	theirs, err := decodeHeader(vs[0])
	if err != nil {
		return err
	}
	// The sender's header says send; compare it with what this rank
	// expects to receive.
	mine := headerOf(req, false)
	mine.kind = core.KindSend
	if e := disagree(n, b.g.Rank, req.Peer, mine, theirs); e != nil {
		if theirs.refused {
			b.s.Delete(ctx, pre+"h")
		}
		return e
	}
	size := len(req.Recv)
	data, err := b.fetch(ctx, []string{pre + "d"}, size)
	if err != nil {
		return fmt.Errorf("kv: %s: %w", op, err)
	}
	copy(req.Recv, data[0])
	for c := 0; c == 0 || c*b.chunk < size; c++ {
		if err := b.s.Delete(ctx, pre+"d/"+strconv.Itoa(c)); err != nil {
			return fmt.Errorf("kv: %s: cleaning up: %w", op, err)
		}
	}
	return b.s.Delete(ctx, pre+"h")
}
