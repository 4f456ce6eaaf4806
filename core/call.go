package core

import (
	"context"
	"sync"
	"unsafe"
)

// requests recycles the *Request each typed call hands to Comm.Do: through
// the interface the pointer escapes, and a fresh one per call would
// allocate on every collective.
var requests = sync.Pool{New: func() any { return new(Request) }}

// Call runs req on c through a pooled *Request, which Comm.Do must not
// keep: the typed APIs that generated packages make call it, so that a
// collective allocates nothing.
func Call(ctx context.Context, c Comm, req Request) error {
	r := requests.Get().(*Request)
	*r = req
	err := c.Do(ctx, r)
	*r = Request{} // keep no buffers alive from the pool
	requests.Put(r)
	return err
}

// Bytes views s as bytes without copying; nil stays nil.
func Bytes[T any](s []T) []byte {
	if s == nil {
		return nil
	}
	var z T
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s)*int(unsafe.Sizeof(z)))
}

// StartCall starts req on c: the typed start forms that generated
// packages make call it. Starter.Start takes the request by value, so
// that nothing escapes and a started call allocates nothing.
func StartCall(ctx context.Context, c Starter, req Request) (Handle, error) {
	return c.Start(ctx, req)
}

// SendRecv sends send to its Peer and receives recv from its Peer as one
// batch (see Guard.StartBatch), so that two ranks exchanging messages of
// any size do not deadlock, and waits for both.
func SendRecv(ctx context.Context, c Starter, send, recv Request) error {
	h, err := StartSendRecv(ctx, c, send, recv)
	if err != nil {
		return err
	}
	return h.Wait(ctx)
}

// StartSendRecv is SendRecv's start form.
func StartSendRecv(ctx context.Context, c Starter, send, recv Request) (Handle, error) {
	send.Kind, recv.Kind = KindSend, KindRecv
	reqs := [2]*Request{&send, &recv}
	return c.StartBatch(ctx, reqs[:])
}
