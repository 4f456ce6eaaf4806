// Package kv is a backend that runs every collective through the
// rendezvous store: each rank publishes its contribution under keys of the
// collective's sequence number and reads what it needs from the others.
//
// It is slow (every byte crosses the store server twice) but simple enough
// to be obviously correct, so it serves as the reference the fast
// backends (shm, tcp) are tested against, and as the fallback where they
// cannot run. Its reductions use generated/kernels, so its numerics are
// the same as theirs bit for bit.
//
// Every collective is also a rendezvous: each rank publishes a header
// (kind, dtype, op, count, root, or an argument error) and waits for every
// other rank's. That is where disagreements are caught (every rank
// returns the same *core.MismatchError) and where a rank that never comes
// is named in a *core.PeerError.
package kv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

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

// Backend runs collectives through a core.Store. It implements
// core.Backend. Calls are serialized: one collective at a time per rank.
type Backend struct {
	g     core.Group
	s     core.Store
	chunk int

	live   bool     // ranks hold ephemeral "alive/<rank>" keys (the store supports them)
	guards []string // every rank's alive key, by rank

	mu      sync.Mutex
	seq     uint64
	written [2][]string    // keys this rank wrote in the last two collectives
	sendSeq map[int]uint64 // next send sequence number per peer
	recvSeq map[int]uint64 // next recv sequence number per peer
	closed  bool
	failed  error // the fatal error after which every call fails
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
	ctx, cancel := b.bound(ctx)
	defer cancel()
	// An ephemeral key that lives as long as this rank's store
	// connection: peers waiting for this rank stop waiting when it dies.
	live, err := store.SetEphemeralIn(ctx, b.s, "alive/"+strconv.Itoa(g.Rank), nil)
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

// Rank implements core.Comm.
func (b *Backend) Rank() int { return b.g.Rank }

// Size implements core.Comm.
func (b *Backend) Size() int { return b.g.Size }

// Close implements core.Backend. It does not wait for peers; keys of the
// last collectives stay in the store, which dies with the job.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return nil
}

// bound applies the group's timeout: every wait ends by then, or by ctx's
// deadline if that comes first (as in backends/shm and backends/tcp).
func (b *Backend) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if b.g.Timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, b.g.Timeout)
}

func rankKeys(prefix string, n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = prefix + strconv.Itoa(i)
	}
	return ks
}

// peerError turns a failed wait on keys (one per rank) into an error
// naming the ranks whose keys are missing.
func (b *Backend) peerError(ctx context.Context, op string, keys []string, err error) error {
	if ctx.Err() == nil {
		// The store itself failed (connection lost): no rank to blame.
		return fmt.Errorf("kv: %s: %w", op, err)
	}
	return &core.PeerError{Op: op, Ranks: store.Missing(ctx, b.s, keys...), Err: ctx.Err()}
}

// ErrPeerGone is the cause in a *core.PeerError for ranks whose store
// connection closed while others waited for them: the process exited or
// crashed.
var ErrPeerGone = errors.New("kv: the rank's store connection closed (its process exited or crashed)")

// goneError names the ranks whose "alive/<rank>" keys are lost.
func goneError(op string, lost []string) error {
	var ranks []int
	for _, k := range lost {
		if r, err := strconv.Atoi(strings.TrimPrefix(k, "alive/")); err == nil {
			ranks = append(ranks, r)
		}
	}
	return &core.PeerError{Op: op, Ranks: ranks, Err: ErrPeerGone}
}

// header is what every rank publishes for a collective.
type header struct {
	kind  core.Kind
	dtype core.DType
	op    core.Op
	count uint64
	root  uint32
	err   string // an argument error on this rank: every rank fails with it
}

func (h *header) encode() []byte {
	b := []byte{byte(h.kind), byte(h.dtype), byte(h.op)}
	b = binary.BigEndian.AppendUint64(b, h.count)
	b = binary.BigEndian.AppendUint32(b, h.root)
	return append(b, h.err...)
}

func decodeHeader(v []byte) (*header, error) {
	if len(v) < 15 {
		return nil, fmt.Errorf("kv: header of %d bytes, want at least 15: is another job using this store prefix?", len(v))
	}
	return &header{
		kind: core.Kind(v[0]), dtype: core.DType(v[1]), op: core.Op(v[2]),
		count: binary.BigEndian.Uint64(v[3:]), root: binary.BigEndian.Uint32(v[11:]),
		err: string(v[15:]),
	}, nil
}

// mismatch compares mine with theirs field by field, in the order a
// reader would check them.
func mismatch(seq uint64, me, peer int, mine, theirs *header) *core.MismatchError {
	e := &core.MismatchError{Seq: seq, Rank: me, Peer: peer}
	switch {
	case mine.kind != theirs.kind:
		e.Field, e.Mine, e.Theirs = "kind", mine.kind.String(), theirs.kind.String()
	case mine.dtype != theirs.dtype:
		e.Field, e.Mine, e.Theirs = "dtype", mine.dtype.String(), theirs.dtype.String()
	case mine.op != theirs.op:
		e.Field, e.Mine, e.Theirs = "op", mine.op.String(), theirs.op.String()
	case mine.count != theirs.count:
		e.Field, e.Mine, e.Theirs = "count", strconv.FormatUint(mine.count, 10), strconv.FormatUint(theirs.count, 10)
	case mine.root != theirs.root:
		e.Field, e.Mine, e.Theirs = "root", strconv.Itoa(int(mine.root)), strconv.Itoa(int(theirs.root))
	default:
		return nil
	}
	return e
}

// Do implements core.Comm.
func (b *Backend) Do(ctx context.Context, req *core.Request) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return core.ErrClosed
	}
	if b.failed != nil {
		return fmt.Errorf("kv: an earlier collective failed, so ranks are out of step; make a new communicator: %w", b.failed)
	}
	ctx, cancel := b.bound(ctx)
	defer cancel()
	var err error
	switch req.Kind {
	case kindSend:
		err = b.send(ctx, req)
	case kindRecv:
		err = b.recv(ctx, req)
	default:
		err = b.collective(ctx, req)
	}
	if err != nil && fatal(err) {
		b.failed = err
	}
	return err
}

// fatal reports whether err leaves ranks out of step. A mismatch or an
// argument error is seen by every rank at the same point, so the next
// collective still lines up; anything else (a timeout, a lost store) does
// not.
func fatal(err error) bool {
	var me *core.MismatchError
	var ae *ArgError
	return !errors.As(err, &me) && !errors.As(err, &ae) && !errors.Is(err, core.ErrUnsupported)
}

// ArgError reports a collective called with unusable arguments on some
// rank; every rank of the collective returns it.
type ArgError struct {
	Seq  uint64
	Rank int    // the rank whose arguments are wrong
	Msg  string // what is wrong
	Err  error  // the cause, on the rank that made the mistake (may be nil)
}

// Unwrap returns the cause, e.g. core.ErrUnsupported.
func (e *ArgError) Unwrap() error { return e.Err }

func (e *ArgError) Error() string {
	return fmt.Sprintf("kv: collective #%d: rank %d: %s", e.Seq, e.Rank, e.Msg)
}

// collective runs every kind except send and recv.
func (b *Backend) collective(ctx context.Context, req *core.Request) error {
	b.seq++
	seq := b.seq
	me, n := b.g.Rank, b.g.Size
	pre := "c/" + strconv.FormatUint(seq, 10) + "/"

	// Every rank has finished collective seq-2 once this rank has seen
	// all headers of seq-1, so this rank's keys from seq-2 can go.
	if old := b.written[0]; len(old) > 0 {
		for _, k := range old {
			if err := b.s.Delete(ctx, k); err != nil {
				return fmt.Errorf("kv: cleaning up: %w", err)
			}
		}
	}
	b.written[0], b.written[1] = b.written[1], nil

	sh, argErr := shapeOf(req, n)
	h := &header{kind: req.Kind, dtype: req.DType, count: uint64(max(req.Count, 0))}
	if argErr == nil {
		if sh.op {
			h.op = req.Op
		}
		if sh.rooted {
			h.root = uint32(req.Root)
		}
		argErr = sh.check(req, me, n)
	}
	if argErr != nil {
		h.err = argErr.Error()
	}

	// Publish data, then the header: a rank that sees the header finds
	// the data in place.
	var names []string
	var vals [][]byte
	if h.err == "" {
		names, vals = sh.publish(req, me, n)
		for i := range names {
			names[i] = pre + "d/" + names[i]
		}
	}
	keys, err := b.put(ctx, names, vals)
	b.written[1] = keys
	if err != nil {
		return fmt.Errorf("kv: %v #%d: publishing: %w", req.Kind, seq, err)
	}
	hk := pre + "h/" + strconv.Itoa(me)
	if err := b.s.Set(ctx, hk, h.encode()); err != nil {
		return fmt.Errorf("kv: %v #%d: publishing header: %w", req.Kind, seq, err)
	}
	b.written[1] = append(b.written[1], hk)

	hkeys := rankKeys(pre+"h/", n)
	raw, lost, err := store.MultiGetGuardedFrom(ctx, b.s, hkeys, b.guards)
	if err != nil {
		return b.peerError(ctx, fmt.Sprintf("%v #%d", req.Kind, seq), hkeys, err)
	}
	if lost != nil {
		return goneError(fmt.Sprintf("%v #%d", req.Kind, seq), lost)
	}
	hs := make([]*header, n)
	for r, v := range raw {
		if hs[r], err = decodeHeader(v); err != nil {
			return err
		}
	}
	for r, hr := range hs {
		if hr.err != "" {
			ae := &ArgError{Seq: seq, Rank: r, Msg: hr.err}
			if r == me {
				ae.Err = argErr
			}
			return ae
		}
	}
	for r, hr := range hs {
		if r != me {
			if e := mismatch(seq, me, r, h, hr); e != nil {
				return e
			}
		}
	}
	get := func(names []string, size int) ([][]byte, error) {
		for i := range names {
			names[i] = pre + "d/" + names[i]
		}
		vs, err := b.fetch(ctx, names, size)
		if err != nil {
			return nil, fmt.Errorf("kv: %v #%d: fetching data: %w", req.Kind, seq, err)
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

// send publishes req.Send for the peer; it does not wait for the peer to
// receive (the store buffers it), so a pair of ranks can each Send and
// then Recv without deadlock.
func (b *Backend) send(ctx context.Context, req *core.Request) error {
	if err := b.checkPeer(req); err != nil {
		return err
	}
	if err := checkLen(b.g.Rank, "send buffer", req.Send, req.Count, req.DType); err != nil {
		return err
	}
	n := b.sendSeq[req.Peer]
	b.sendSeq[req.Peer]++
	pre := fmt.Sprintf("p/%d/%d/%d/", b.g.Rank, req.Peer, n)
	if _, err := b.put(ctx, []string{pre + "d"}, [][]byte{req.Send}); err != nil {
		return fmt.Errorf("kv: send #%d to rank %d: %w", n, req.Peer, err)
	}
	h := &header{kind: kindSend, dtype: req.DType, count: uint64(req.Count)}
	if err := b.s.Set(ctx, pre+"h", h.encode()); err != nil {
		return fmt.Errorf("kv: send #%d to rank %d: %w", n, req.Peer, err)
	}
	return nil
}

// recv waits for the peer's matching send, copies it out and deletes it.
func (b *Backend) recv(ctx context.Context, req *core.Request) error {
	if err := b.checkPeer(req); err != nil {
		return err
	}
	if err := checkLen(b.g.Rank, "recv buffer", req.Recv, req.Count, req.DType); err != nil {
		return err
	}
	n := b.recvSeq[req.Peer]
	b.recvSeq[req.Peer]++
	pre := fmt.Sprintf("p/%d/%d/%d/", req.Peer, b.g.Rank, n)
	op := fmt.Sprintf("recv #%d from rank %d", n, req.Peer)
	var guards []string
	if b.live {
		guards = []string{"alive/" + strconv.Itoa(req.Peer)}
	}
	vs, lost, err := store.MultiGetGuardedFrom(ctx, b.s, []string{pre + "h"}, guards)
	if err != nil {
		if ctx.Err() != nil {
			return &core.PeerError{Op: op, Ranks: []int{req.Peer}, Err: ctx.Err()}
		}
		return fmt.Errorf("kv: %s: %w", op, err)
	}
	if lost != nil {
		return goneError(op, lost)
	}
	v := vs[0]
	h, err := decodeHeader(v)
	if err != nil {
		return err
	}
	mine := &header{kind: kindSend, dtype: req.DType, count: uint64(req.Count)}
	if e := mismatch(n, b.g.Rank, req.Peer, mine, h); e != nil {
		return e
	}
	size := req.Count * req.DType.Size()
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

func (b *Backend) checkPeer(req *core.Request) error {
	if req.Peer < 0 || req.Peer >= b.g.Size || req.Peer == b.g.Rank {
		return &ArgError{Rank: b.g.Rank, Msg: fmt.Sprintf("peer %d is not another rank of 0..%d", req.Peer, b.g.Size-1)}
	}
	if req.DType.Size() == 0 {
		return fmt.Errorf("kv: %w: dtype %v is not registered (import generated/coll)", core.ErrUnsupported, req.DType)
	}
	if req.Count < 0 {
		return &ArgError{Rank: b.g.Rank, Msg: fmt.Sprintf("count %d is negative", req.Count)}
	}
	return nil
}

func checkLen(rank int, what string, buf []byte, count int, dt core.DType) error {
	if want := count * dt.Size(); len(buf) != want {
		return &ArgError{Rank: rank, Msg: fmt.Sprintf("%s holds %d bytes, want %d (%d × %v)", what, len(buf), want, count, dt)}
	}
	return nil
}
