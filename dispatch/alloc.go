package dispatch

import (
	"github.com/gocoll/gocoll/backends/hier"
	"github.com/gocoll/gocoll/backends/shm"
)

// sharedHeap is the shared-memory backend serving this rank's node: the
// backend itself, or the node part of the hierarchical backend.
func (c *Comm) sharedHeap() *shm.Backend {
	switch b := c.guard.Backend().(type) {
	case *shm.Backend:
		return b
	case *hier.Backend:
		if l, ok := b.Local().(*shm.Backend); ok {
			return l
		}
	}
	return nil
}

// Alloc returns an n-byte buffer for collectives' send buffers that the
// backend reads without copying it in first, like MPI_Win_allocate_shared:
// with the shared-memory backend it lives in the node's shared workspace
// (room for it is set with WithShm(shm.WithHeapSize(...))). Other backends
// have no such memory and return ordinary memory, so code using Alloc runs
// on any backend. The buffer must not change while a collective reads it;
// release it with Free.
func (c *Comm) Alloc(n int) ([]byte, error) {
	if h := c.sharedHeap(); h != nil {
		return h.Alloc(n)
	}
	return make([]byte, n), nil
}

// Free releases a buffer from Alloc.
func (c *Comm) Free(buf []byte) error {
	if h := c.sharedHeap(); h != nil {
		return h.Free(buf)
	}
	return nil
}
