package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Wire format. After the handshake (see auth.go) both directions carry
// frames: a 4-byte big-endian body length, then the body. Every length in a
// body is checked against what is left of the body and against fixed
// bounds before anything is allocated, so a malformed frame costs the
// server at most the bytes it sent and closes only its own connection.
//
// Request body:
//
//	op u8 | id u64 | flags u8 | delta i64 | nkeys u32 | (len u32, key)* | nvals u32 | (len u32, value)*
//
// Response body:
//
//	status u8 | id u64 | flags u8 | num i64 | nvals u32 | (len u32, value)*
//
// All integers are big-endian.

const (
	// DefaultMaxFrame bounds a frame body unless WithMaxFrame says otherwise.
	// Values are rendezvous data (addresses, segment names, small blobs);
	// callers that move bulk data through the store chunk it below this.
	DefaultMaxFrame = 16 << 20
	// MaxKeyLen bounds the length of a key in bytes.
	MaxKeyLen = 4096
	// MaxKeys bounds the number of keys in one Wait, MultiGet or MultiSet.
	MaxKeys = 1 << 16

	frameHeader = 4
	reqFixed    = 1 + 8 + 1 + 8 + 4 // op, id, flags, delta, nkeys
	respFixed   = 1 + 8 + 1 + 8 + 4 // status, id, flags, num, nvals
)

type opcode uint8

const (
	opSet opcode = 1 + iota
	opGet
	opTryGet
	opAdd
	opCAS
	opDelete
	opWait
	opMultiGet
	opMultiSet
	opCancel
	opMax // first unused opcode
)

var opNames = [...]string{
	opSet: "set", opGet: "get", opTryGet: "tryget", opAdd: "add", opCAS: "compare-and-set",
	opDelete: "delete", opWait: "wait", opMultiGet: "multiget", opMultiSet: "multiset", opCancel: "cancel",
}

func (o opcode) String() string {
	if o > 0 && o < opMax {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// blocking reports whether the server may hold the request until keys
// appear; such requests run in their own goroutine and can be cancelled.
func (o opcode) blocking() bool { return o == opGet || o == opWait || o == opMultiGet }

const (
	flagCASAbsent = 1 << 0 // CAS: the expected old state is "key absent"
	flagEphemeral = 1 << 0 // Set: delete the key when this connection closes
	flagFound     = 1 << 0 // response: TryGet found the key; CAS swapped; a guarded wait completed
)

const (
	statusOK  = 0
	statusErr = 1 // values[0] is the message
)

type request struct {
	op     opcode
	id     uint64
	flags  uint8
	delta  int64
	keys   []string
	values [][]byte
}

type response struct {
	status uint8
	id     uint64
	flags  uint8
	num    int64
	values [][]byte
}

// errFrame marks a frame that breaks the protocol; the connection that sent
// it is closed.
var errFrame = errors.New("malformed frame")

// errFrameTooLarge marks a frame whose announced length exceeds the bound.
var errFrameTooLarge = errors.New("frame exceeds the size limit")

// readChunk is the most a frame body grows by per read. A header may
// announce up to the frame limit, and a client that sends only part of
// that must cost the server the bytes it sent, not the bytes it announced.
const readChunk = 64 << 10

// readFrame reads one frame body of at most max bytes. The body's memory
// follows the bytes that arrive: a short body is read into one buffer of
// its length; a longer one in readChunk pieces, joined once the last
// piece is in.
func readFrame(r io.Reader, max int) ([]byte, error) {
	var h [frameHeader]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if uint64(n) > uint64(max) {
		return nil, fmt.Errorf("%w: %d bytes announced, limit %d", errFrameTooLarge, n, max)
	}
	if n <= readChunk {
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return nil, unexpected(err)
		}
		return body, nil
	}
	pieces := make([][]byte, 0, (int(n)+readChunk-1)/readChunk)
	for left := int(n); left > 0; {
		p := make([]byte, min(left, readChunk))
		if _, err := io.ReadFull(r, p); err != nil {
			return nil, unexpected(err)
		}
		pieces = append(pieces, p)
		left -= len(p)
	}
	body := make([]byte, 0, n)
	for _, p := range pieces {
		body = append(body, p...)
	}
	return body, nil
}

// unexpected turns the end of the stream inside a frame into
// io.ErrUnexpectedEOF: only a frame boundary is a clean end.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func appendBytes(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

// encodeRequest returns the full frame (header included) for r.
func encodeRequest(r *request) []byte {
	n := frameHeader + reqFixed + 4
	for _, k := range r.keys {
		n += 4 + len(k)
	}
	for _, v := range r.values {
		n += 4 + len(v)
	}
	b := make([]byte, frameHeader, n)
	b = append(b, byte(r.op))
	b = binary.BigEndian.AppendUint64(b, r.id)
	b = append(b, r.flags)
	b = binary.BigEndian.AppendUint64(b, uint64(r.delta))
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.keys)))
	for _, k := range r.keys {
		b = binary.BigEndian.AppendUint32(b, uint32(len(k)))
		b = append(b, k...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.values)))
	for _, v := range r.values {
		b = appendBytes(b, v)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-frameHeader))
	return b
}

// encodeResponse returns the full frame (header included) for r.
func encodeResponse(r *response) []byte {
	n := frameHeader + respFixed
	for _, v := range r.values {
		n += 4 + len(v)
	}
	b := make([]byte, frameHeader, n)
	b = append(b, r.status)
	b = binary.BigEndian.AppendUint64(b, r.id)
	b = append(b, r.flags)
	b = binary.BigEndian.AppendUint64(b, uint64(r.num))
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.values)))
	for _, v := range r.values {
		b = appendBytes(b, v)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-frameHeader))
	return b
}

// decoder walks a frame body; every read checks the remaining length.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{errFrame}, args...)...)
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail("field of %d bytes, %d left", n, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() uint8 {
	v := d.take(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (d *decoder) u32() uint32 {
	v := d.take(4)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func (d *decoder) u64() uint64 {
	v := d.take(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// count reads a list length and checks it against limit and against the
// bytes left (each element needs at least 4), so no list is allocated
// larger than the frame could fill.
func (d *decoder) count(what string, limit int) int {
	n := d.u32()
	if d.err != nil {
		return 0
	}
	if uint64(n) > uint64(limit) || uint64(n)*4 > uint64(len(d.b)) {
		d.fail("%d %s announced, limit %d, %d bytes left", n, what, limit, len(d.b))
		return 0
	}
	return int(n)
}

func (d *decoder) values() [][]byte {
	n := d.count("values", MaxKeys)
	if d.err != nil {
		return nil
	}
	vs := make([][]byte, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		l := d.u32()
		vs = append(vs, d.take(int(l)))
	}
	return vs
}

func (d *decoder) end() {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
}

// decodeRequest parses and validates a request body: after it succeeds the
// server can act on the request without further checks.
func decodeRequest(body []byte) (*request, error) {
	d := &decoder{b: body}
	r := &request{}
	r.op = opcode(d.u8())
	r.id = d.u64()
	r.flags = d.u8()
	r.delta = int64(d.u64())
	nk := d.count("keys", MaxKeys)
	if d.err == nil {
		r.keys = make([]string, 0, nk)
	}
	for i := 0; i < nk && d.err == nil; i++ {
		l := d.u32()
		if l == 0 || l > MaxKeyLen {
			d.fail("key of %d bytes, must be 1..%d", l, MaxKeyLen)
			break
		}
		r.keys = append(r.keys, string(d.take(int(l))))
	}
	r.values = d.values()
	d.end()
	if d.err != nil {
		return nil, d.err
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// validate checks that the request has the shape its op needs.
func (r *request) validate() error {
	nk, nv := len(r.keys), len(r.values)
	var ok bool
	switch r.op {
	case opSet:
		ok = nk == 1 && nv == 1 && r.flags&^flagEphemeral == 0
	case opAdd:
		ok = nk == 1 && nv == 0 && r.flags == 0
	case opGet, opTryGet, opDelete:
		ok = nk == 1 && nv == 0 && r.flags == 0 && r.delta == 0
	case opCAS:
		ok = nk == 1 && nv == 2 && r.flags&^flagCASAbsent == 0
	case opWait, opMultiGet:
		// delta counts guard keys, listed after the keys waited for:
		// none, or one per key.
		ok = nk >= 1 && nv == 0 && r.flags == 0 && (r.delta == 0 || 2*r.delta == int64(nk))
	case opMultiSet:
		ok = nk >= 1 && nv == nk && r.flags == 0
	case opCancel:
		ok = nk == 0 && nv == 0 && r.flags == 0
	}
	if !ok {
		return fmt.Errorf("%w: %v request with %d keys, %d values, flags %#x", errFrame, r.op, nk, nv, r.flags)
	}
	return nil
}

// decodeResponse parses a response body.
func decodeResponse(body []byte) (*response, error) {
	d := &decoder{b: body}
	r := &response{}
	r.status = d.u8()
	r.id = d.u64()
	r.flags = d.u8()
	r.num = int64(d.u64())
	r.values = d.values()
	d.end()
	if d.err != nil {
		return nil, d.err
	}
	if r.status > statusErr || (r.status == statusErr && len(r.values) != 1) {
		return nil, fmt.Errorf("%w: response status %d with %d values", errFrame, r.status, len(r.values))
	}
	return r, nil
}
