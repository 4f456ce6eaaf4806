package object

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/gocoll/gocoll/core"
)

const (
	// HeaderSize is the bytes each value's header takes in the first
	// exchange: its length and its first InlineSize bytes.
	HeaderSize = 1024
	// InlineSize is the most bytes of a value its header carries: a value
	// this long or shorter moves in one exchange.
	InlineSize = HeaderSize - preamble

	// preamble is the header's length field and the root the rank passed
	// (which an allgather of the headers cannot compare by itself).
	preamble = 16

	// failed is the length a header carries when its rank has no value
	// to send: its first bytes then hold a uint32 length and the text of
	// the error.
	failed = -1
)

// EncodeError reports values that could not be encoded, on the ranks named
// in Ranks (in increasing order). On a rank it names, Err is that rank's own
// codec error (or, for the root of a scatter, its argument error); on the
// others, an error holding the text the first rank named reported.
type EncodeError struct {
	Op    string // "broadcast", "allgather", "gather" or "scatter"
	Ranks []int
	Err   error
}

func (e *EncodeError) Error() string {
	rs := make([]string, len(e.Ranks))
	for i, r := range e.Ranks {
		rs[i] = strconv.Itoa(r)
	}
	who := "rank " + rs[0]
	if len(rs) > 1 {
		who = "ranks " + strings.Join(rs, ",")
	}
	return fmt.Sprintf("gocoll: object %s: %s failed before sending its value, so no rank received any: %v", e.Op, who, e.Err)
}

func (e *EncodeError) Unwrap() error { return e.Err }

// byteType caches the dtype byteDType found.
var byteType atomic.Pointer[core.Type]

// byteDType returns the registered one-byte dtype the bytes travel as: the
// lowest id of an unsigned one, else the lowest id of any (see the package
// documentation).
func byteDType() (core.DType, error) {
	if t := byteType.Load(); t != nil {
		return t.ID, nil
	}
	var pick *core.Type
	for _, t := range core.Types() { // by id
		if t.Size != 1 {
			continue
		}
		if t.Class == core.ClassUint {
			pick = t
			break
		}
		if pick == nil {
			pick = t
		}
	}
	if pick == nil {
		return 0, fmt.Errorf("gocoll: object: no one-byte dtype is registered to carry the bytes: %w; import a spec's generated package (github.com/gocoll/gocoll/generated/coll registers uint8)", core.ErrUnsupported)
	}
	byteType.Store(pick)
	return pick.ID, nil
}

// putHeader writes data's header into h (HeaderSize bytes), or fail's when
// fail is not nil: the length (or failed), the root, and data's first
// bytes (or the length and text of fail's message).
func putHeader(h, data []byte, fail error, root int) {
	clear(h)
	binary.LittleEndian.PutUint64(h[8:], uint64(int64(root)))
	if fail != nil {
		n := int64(failed)
		binary.LittleEndian.PutUint64(h, uint64(n))
		msg := fail.Error()
		if len(msg) > InlineSize-4 {
			msg = msg[:InlineSize-4]
		}
		binary.LittleEndian.PutUint32(h[preamble:], uint32(len(msg)))
		copy(h[preamble+4:], msg)
		return
	}
	binary.LittleEndian.PutUint64(h, uint64(len(data)))
	copy(h[preamble:], data[:min(len(data), InlineSize)])
}

// headerRoot is the root a header carries.
func headerRoot(h []byte) int64 { return int64(binary.LittleEndian.Uint64(h[8:])) }

// header reads a header: the value's length, or failed and the error its
// rank reported.
func header(h []byte) (int, error) {
	n := int64(binary.LittleEndian.Uint64(h))
	if n == failed {
		m := min(int(binary.LittleEndian.Uint32(h[preamble:])), InlineSize-4)
		return failed, errors.New(string(h[preamble+4 : preamble+4+m]))
	}
	if n < 0 || n > int64(^uint(0)>>1) {
		return 0, fmt.Errorf("a header claims a length of %d bytes: the ranks do not run the same protocol", n)
	}
	return int(n), nil
}

// rest is how many bytes of an n-byte value follow its header.
func rest(n int) int { return max(n-InlineSize, 0) }

// headers reads np headers from hs: each rank's length, and the
// *EncodeError naming the ranks that failed (with mine, this rank's own
// error, when it is one of them).
func headers(op string, hs []byte, np, rank int, mine error) ([]int, error) {
	lens := make([]int, np)
	var bad *EncodeError
	for r := range np {
		n, err := header(hs[r*HeaderSize : (r+1)*HeaderSize])
		if err != nil && n != failed {
			return nil, fmt.Errorf("gocoll: object %s: rank %d's header: %w", op, r, err)
		}
		if n == failed {
			if bad == nil {
				bad = &EncodeError{Op: op, Err: err}
			}
			bad.Ranks = append(bad.Ranks, r)
			if r == rank && mine != nil {
				bad.Err = mine
			}
		}
		lens[r] = n
	}
	if bad != nil {
		return nil, bad
	}
	return lens, nil
}

// do runs one collective on bytes.
func do(ctx context.Context, c core.Comm, dt core.DType, kind core.Kind, count, root, peer int, send, recv []byte) error {
	return core.Call(ctx, c, core.Request{Kind: kind, DType: dt, Count: count, Root: root, Peer: peer, Send: send, Recv: recv})
}

// BroadcastBytes sends root's data to every rank: it returns data on the
// root and a copy of it elsewhere (where data is not read). A value of at
// most InlineSize bytes moves in one broadcast, a longer one in two.
func BroadcastBytes(ctx context.Context, c core.Comm, data []byte, root int) ([]byte, error) {
	return broadcast(ctx, c, data, nil, root)
}

// broadcast is BroadcastBytes with the root's encoding error, which every
// rank then returns.
func broadcast(ctx context.Context, c core.Comm, data []byte, fail error, root int) ([]byte, error) {
	dt, err := byteDType()
	if err != nil {
		return nil, err
	}
	isRoot := c.Rank() == root
	h := make([]byte, HeaderSize)
	if isRoot {
		putHeader(h, data, fail, root)
	}
	if err := do(ctx, c, dt, core.KindBroadcast, HeaderSize, root, 0, h, h); err != nil {
		return nil, err
	}
	lens, err := headers("broadcast", h, 1, 0, fail)
	if err != nil {
		var e *EncodeError
		if errors.As(err, &e) {
			e.Ranks[0] = root
		}
		return nil, err
	}
	n := lens[0]
	out := data
	if !isRoot {
		out = make([]byte, n)
		copy(out, h[preamble:])
	}
	if m := rest(n); m > 0 {
		if err := do(ctx, c, dt, core.KindBroadcast, m, root, 0, out[InlineSize:], out[InlineSize:]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// AllgatherBytes gathers every rank's data on every rank: element r of
// the result is rank r's data (a copy, this rank's included). Values of
// at most InlineSize bytes move in one allgather; the rest of longer ones
// in one allgatherv, each at its own length.
func AllgatherBytes(ctx context.Context, c core.Comm, data []byte) ([][]byte, error) {
	return allgather(ctx, c, data, nil)
}

func allgather(ctx context.Context, c core.Comm, data []byte, fail error) ([][]byte, error) {
	dt, err := byteDType()
	if err != nil {
		return nil, err
	}
	np, rank := c.Size(), c.Rank()
	mine := make([]byte, HeaderSize)
	putHeader(mine, data, fail, 0)
	hs := make([]byte, np*HeaderSize)
	if err := do(ctx, c, dt, core.KindAllgather, HeaderSize, 0, 0, mine, hs); err != nil {
		return nil, err
	}
	lens, err := headers("allgather", hs, np, rank, fail)
	if err != nil {
		return nil, err
	}
	out, buf := split(hs, lens)
	if err := allgatherRest(ctx, c, dt, data, lens, buf); err != nil {
		return nil, err
	}
	return out, nil
}

// split makes the results for lens out of one allocation, buf, and fills
// in the first bytes each header carried; out[r] starts at the sum of
// lens[:r] in buf.
func split(hs []byte, lens []int) (out [][]byte, buf []byte) {
	total := 0
	for _, n := range lens {
		total += n
	}
	buf = make([]byte, total)
	out = make([][]byte, len(lens))
	off := 0
	for r, n := range lens {
		out[r] = buf[off : off+n : off+n]
		copy(out[r], hs[r*HeaderSize+preamble:(r+1)*HeaderSize])
		off += n
	}
	return out, buf
}

// rests gives, for values of lengths lens laid out as split lays them out,
// the length of each one's bytes past InlineSize, where those bytes start
// in split's buffer, and their sum.
func rests(lens []int) (counts, displs []int, total int) {
	counts, displs = make([]int, len(lens)), make([]int, len(lens))
	off := 0
	for r, n := range lens {
		counts[r], displs[r] = rest(n), off+min(n, InlineSize)
		total += counts[r]
		off += n
	}
	return counts, displs, total
}

// allgatherRest moves what followed the headers of an allgather, each
// rank's bytes past InlineSize, in one allgatherv straight into their
// places in buf, split's buffer behind out.
func allgatherRest(ctx context.Context, c core.Comm, dt core.DType, data []byte, lens []int, buf []byte) error {
	counts, displs, total := rests(lens)
	if total == 0 {
		return nil
	}
	var send []byte
	if counts[c.Rank()] > 0 {
		send = data[InlineSize:]
	}
	return core.Call(ctx, c, core.Request{Kind: core.KindAllgatherv, DType: dt, Send: send, Recv: buf, RecvCounts: counts, RecvDispls: displs})
}

// GatherBytes gathers every rank's data on root: on the root element r of
// the result is rank r's data (a copy, the root's included); elsewhere the
// result is nil. The headers move with an allgather rather than a gather,
// so that every rank learns at once when one could not encode its value;
// the bytes past InlineSize then move to the root in one gatherv, each at
// its own length.
func GatherBytes(ctx context.Context, c core.Comm, data []byte, root int) ([][]byte, error) {
	return gather(ctx, c, data, nil, root)
}

func gather(ctx context.Context, c core.Comm, data []byte, fail error, root int) ([][]byte, error) {
	dt, err := byteDType()
	if err != nil {
		return nil, err
	}
	np, rank := c.Size(), c.Rank()
	if root < 0 || root >= np {
		// The ranks must still fail together: the allgather of the
		// headers below cannot see the root, so pass the bad root to a
		// collective that can, whose refusal names this rank everywhere.
		return nil, do(ctx, c, dt, core.KindGather, HeaderSize, root, 0, make([]byte, HeaderSize), nil)
	}
	mine := make([]byte, HeaderSize)
	putHeader(mine, data, fail, root)
	hs := make([]byte, np*HeaderSize)
	if err := do(ctx, c, dt, core.KindAllgather, HeaderSize, 0, 0, mine, hs); err != nil {
		return nil, err
	}
	if err := sameRoot(hs, np, rank); err != nil {
		return nil, err
	}
	lens, err := headers("gather", hs, np, rank, fail)
	if err != nil {
		return nil, err
	}
	// The bytes past InlineSize go to the root in one gatherv, straight
	// into their places behind the results.
	counts, displs, total := rests(lens)
	var out [][]byte
	var buf []byte
	if rank == root {
		out, buf = split(hs, lens)
	} else {
		displs = nil // the root's alone
	}
	if total > 0 {
		var send []byte
		if counts[rank] > 0 {
			send = data[InlineSize:]
		}
		if err := core.Call(ctx, c, core.Request{Kind: core.KindGatherv, DType: dt, Root: root, Send: send, Recv: buf, RecvCounts: counts, RecvDispls: displs}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ScatterBytes sends parts[r] from root to rank r: parts is read on the
// root only, where it must hold one element per rank. Each rank returns
// its part (on the root, parts[root] itself). Parts of at most InlineSize
// bytes move in one scatter; the rest of longer ones follows from the root
// to each rank that has more, at its own length.
func ScatterBytes(ctx context.Context, c core.Comm, parts [][]byte, root int) ([]byte, error) {
	var fail error
	if c.Rank() == root && len(parts) != c.Size() {
		fail = fmt.Errorf("gocoll: object scatter: %w: the root passed %d parts for %d ranks; pass one per rank", core.ErrInvalid, len(parts), c.Size())
	}
	return scatter(ctx, c, parts, fail, root)
}

func scatter(ctx context.Context, c core.Comm, parts [][]byte, fail error, root int) ([]byte, error) {
	dt, err := byteDType()
	if err != nil {
		return nil, err
	}
	np, rank := c.Size(), c.Rank()
	var hs []byte
	if rank == root {
		hs = make([]byte, np*HeaderSize)
		for r := range np {
			var p []byte
			if fail == nil {
				p = parts[r]
			}
			putHeader(hs[r*HeaderSize:(r+1)*HeaderSize], p, fail, root)
		}
	}
	h := make([]byte, HeaderSize)
	if err := do(ctx, c, dt, core.KindScatter, HeaderSize, root, 0, hs, h); err != nil {
		return nil, err
	}
	lens, err := headers("scatter", h, 1, 0, fail)
	if err != nil {
		var e *EncodeError
		if errors.As(err, &e) {
			e.Ranks[0] = root
		}
		return nil, err
	}
	if rank == root {
		for r := range np {
			if m := rest(len(parts[r])); m > 0 && r != rank {
				if err := do(ctx, c, dt, core.KindSend, m, 0, r, parts[r][InlineSize:], nil); err != nil {
					return nil, err
				}
			}
		}
		return parts[rank], nil
	}
	mine, _ := split(h, lens)
	out := mine[0]
	if m := rest(lens[0]); m > 0 {
		if err := do(ctx, c, dt, core.KindRecv, m, 0, root, nil, out[InlineSize:]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// sameRoot compares the roots the ranks' headers carry, for a gather whose
// headers moved with an allgather (which has no root to compare), and
// returns the *core.MismatchError every rank then returns alike.
func sameRoot(hs []byte, np, rank int) error {
	mine := headerRoot(hs[rank*HeaderSize:])
	for r := range np {
		if theirs := headerRoot(hs[r*HeaderSize:]); theirs != mine {
			return &core.MismatchError{Field: "root", Rank: rank, Mine: strconv.FormatInt(mine, 10),
				Peer: r, Theirs: strconv.FormatInt(theirs, 10)}
		}
	}
	return nil
}
