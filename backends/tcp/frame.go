package tcp

import (
	"encoding/binary"
	"errors"
	"strconv"

	"github.com/gocoll/gocoll/core"
)

// Every frame on a connection starts with a fixed header:
//
//	0  magic   uint16  'G','C'
//	2  type    uint8   data, abort, bye
//	3  kind    uint8   core.Kind
//	4  dtype   uint8   core.DType
//	5  op      uint8   core.Op
//	6  algo    uint8   Algorithm
//	7  flags   uint8   flagMore, flagRefused
//	8  seq     uint64  collective number (send/recv: per-pair message number)
//	16 count   uint64  the collective's Count
//	24 root    int32   Root for rooted collectives, else 0
//	28 length  uint32  payload bytes that follow
//
// Every frame on a data connection carries its sender's call (kind, dtype,
// op, count, root, sequence, algorithm): the receiver compares them with
// its own call before it reads a byte of payload (see agree.go).
const (
	hdrSize  = 32
	magic    = 0x4347 // "GC" little-endian
	maxFrame = 1 << 30
)

type frameType uint8

const (
	frameData  frameType = 1
	frameAbort frameType = 2 // control: a rank failed a collective (payload: abortInfo)
	frameBye   frameType = 3 // control: the sender is closing in good order
	frameStall frameType = 4 // control: the sender timed out in collective seq waiting for rank root
	frameAgree frameType = 5 // data: a rooted collective's agreement round (no payload)
	frameEnd   frameType = 6 // data: the sender ends the call after a disagreement or a refusal (payload: chunk size, detail)
	frameAck   frameType = 7 // control: the receiver began the rendezvous message seq (rendezvous.go)
)

// Header flags.
const (
	// flagMore marks a frame that a longer message continues in the next
	// one (a payload above maxFrame is cut into several).
	flagMore = 1 << 0
	// flagRefused marks the call of a rank that refused its own request
	// (Refuse): its other fields are whatever the request held.
	flagRefused = 1 << 1
)

type header struct {
	typ    frameType
	kind   core.Kind
	dtype  core.DType
	op     core.Op
	algo   Algorithm
	flags  uint8
	seq    uint64
	count  uint64
	root   int32
	length uint32
}

func (h *header) put(b []byte) {
	_ = b[hdrSize-1]
	binary.LittleEndian.PutUint16(b[0:], magic)
	b[2] = byte(h.typ)
	b[3] = byte(h.kind)
	b[4] = byte(h.dtype)
	b[5] = byte(h.op)
	b[6] = byte(h.algo)
	b[7] = h.flags
	binary.LittleEndian.PutUint64(b[8:], h.seq)
	binary.LittleEndian.PutUint64(b[16:], h.count)
	binary.LittleEndian.PutUint32(b[24:], uint32(h.root))
	binary.LittleEndian.PutUint32(b[28:], h.length)
}

var errBadMagic = errors.New("frame does not start with the gocoll magic: the stream is out of step or not from gocoll")

func (h *header) get(b []byte) error {
	_ = b[hdrSize-1]
	if binary.LittleEndian.Uint16(b[0:]) != magic {
		return errBadMagic
	}
	h.typ = frameType(b[2])
	h.kind = core.Kind(b[3])
	h.dtype = core.DType(b[4])
	h.op = core.Op(b[5])
	h.algo = Algorithm(b[6])
	h.flags = b[7]
	h.seq = binary.LittleEndian.Uint64(b[8:])
	h.count = binary.LittleEndian.Uint64(b[16:])
	h.root = int32(binary.LittleEndian.Uint32(b[24:]))
	h.length = binary.LittleEndian.Uint32(b[28:])
	return nil
}

// mismatch compares a received header with the expected one and names the
// first field that differs, with both values as text; "" when they agree.
// Flags are not compared: they describe the frame, not the call.
func mismatch(exp, got *header) (field, mine, theirs string) {
	switch {
	case got.typ != exp.typ:
		return "frame type", strconv.Itoa(int(exp.typ)), strconv.Itoa(int(got.typ))
	case got.kind != exp.kind:
		return "kind", exp.kind.String(), got.kind.String()
	case got.dtype != exp.dtype:
		return "dtype", exp.dtype.String(), got.dtype.String()
	case got.op != exp.op:
		return "op", opString(exp.op), opString(got.op)
	case got.count != exp.count:
		return "count", strconv.FormatUint(exp.count, 10), strconv.FormatUint(got.count, 10)
	case got.root != exp.root:
		return "root", strconv.Itoa(int(exp.root)), strconv.Itoa(int(got.root))
	case got.seq != exp.seq:
		return "seq", strconv.FormatUint(exp.seq, 10), strconv.FormatUint(got.seq, 10)
	case got.algo != exp.algo:
		return "algorithm", exp.algo.String(), got.algo.String()
	case got.length != exp.length:
		return "frame length", strconv.FormatUint(uint64(exp.length), 10), strconv.FormatUint(uint64(got.length), 10)
	}
	return "", "", ""
}

// describe says what call h stands for, from its raw fields (a refused
// call's may be anything), for a peer's error: "allreduce of 16 float32,
// op sum".
func (h *header) describe() string {
	return core.Describe(h.kind, h.dtype, h.op, int64(h.count), int64(h.root))
}

func opString(o core.Op) string {
	if o == 0 {
		return "none"
	}
	return o.String()
}

// abortPeer is the reason of every abort frame: ranks failed or did not
// take part. (Disagreements never fail the backend; see agree.go.)
const abortPeer = 2

// abortInfo is the payload of an abort frame: why a collective failed, in
// enough detail that every rank returns the same error.
type abortInfo struct {
	seq    uint64 // the collective (the header's seq field carries it)
	reason uint8
	ranks  []int  // the ranks that failed
	msg    string // the cause as text
}

func (a *abortInfo) marshal() []byte {
	b := []byte{a.reason}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(a.ranks)))
	for _, r := range a.ranks {
		b = binary.LittleEndian.AppendUint32(b, uint32(int32(r)))
	}
	s := a.msg
	if len(s) > 1024 {
		s = s[:1024]
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

var errShortAbort = errors.New("malformed abort frame")

func (a *abortInfo) unmarshal(b []byte) error {
	if len(b) < 3 {
		return errShortAbort
	}
	a.reason = b[0]
	n := int(binary.LittleEndian.Uint16(b[1:]))
	b = b[3:]
	if len(b) < 4*n {
		return errShortAbort
	}
	a.ranks = make([]int, n)
	for i := range a.ranks {
		a.ranks[i] = int(int32(binary.LittleEndian.Uint32(b[4*i:])))
	}
	b = b[4*n:]
	if len(b) < 2 {
		return errShortAbort
	}
	l := int(binary.LittleEndian.Uint16(b))
	if len(b) < 2+l {
		return errShortAbort
	}
	a.msg = string(b[2 : 2+l])
	return nil
}
