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
