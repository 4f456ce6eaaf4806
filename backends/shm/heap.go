package shm

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"unsafe"
)

// Zero copy: each rank has a heap in the workspace (WithHeapSize). Alloc
// hands out buffers from it; when a large allreduce or reduce gets one as
// its send buffer, peers read it where it lies instead of the rank copying
// it into its data buffer first. Like MPI_Win_allocate_shared, except that
// allocation is local (no collective call).

// heapAlign keeps buffers on their own cache lines.
const heapAlign = 64

type span struct{ off, size int }

// heapAlloc is a first-fit allocator over [0, size) with coalescing frees.
type heapAlloc struct {
	mu   sync.Mutex
	size int
	free []span      // sorted by off, never adjacent
	used map[int]int // off -> size
}

func (h *heapAlloc) init(size int) {
	h.size = size
	h.used = map[int]int{}
	if size > 0 {
		h.free = []span{{0, size}}
	}
}

func (h *heapAlloc) alloc(n int) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sz := roundUp(max(n, 1), heapAlign)
	for i, s := range h.free {
		if s.size >= sz {
			if s.size == sz {
				h.free = append(h.free[:i], h.free[i+1:]...)
			} else {
				h.free[i] = span{s.off + sz, s.size - sz}
			}
			h.used[s.off] = sz
			return s.off, nil
		}
	}
	inUse := 0
	for _, u := range h.used {
		inUse += u
	}
	return 0, fmt.Errorf("shm: Alloc(%d): the zero-copy heap has %d bytes, %d in use and the rest too fragmented or too small; raise shm.WithHeapSize", n, h.size, inUse)
}

func (h *heapAlloc) release(off int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	sz, ok := h.used[off]
	if !ok {
		return errors.New("shm: Free of a buffer that Alloc did not return (or freed twice)")
	}
	delete(h.used, off)
	i := sort.Search(len(h.free), func(i int) bool { return h.free[i].off > off })
	h.free = append(h.free, span{})
	copy(h.free[i+1:], h.free[i:])
	h.free[i] = span{off, sz}
	// Merge with the next, then with the previous neighbour.
	if i+1 < len(h.free) && h.free[i].off+h.free[i].size == h.free[i+1].off {
		h.free[i].size += h.free[i+1].size
		h.free = append(h.free[:i+1], h.free[i+2:]...)
	}
	if i > 0 && h.free[i-1].off+h.free[i-1].size == h.free[i].off {
		h.free[i-1].size += h.free[i].size
		h.free = append(h.free[:i], h.free[i+1:]...)
	}
	return nil
}

// Alloc returns an n-byte buffer that lives in this rank's part of the
// shared workspace. A large allreduce or reduce whose send buffer is (a
// slice of) such a buffer skips copying it into the workspace: peers read
// it in place. The buffer is valid until Free or Close; it must not be
// modified while a collective that reads it runs. The heap's size is set by
// WithHeapSize (rank 0's value applies to all ranks).
func (b *Backend) Alloc(n int) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("shm: Alloc(%d): negative size", n)
	}
	if b.lay.heapSize == 0 {
		return nil, errors.New("shm: Alloc: the workspace has no zero-copy heap; create the backend with shm.WithHeapSize")
	}
	off, err := b.heap.alloc(n)
	if err != nil {
		return nil, err
	}
	h := b.heapOf(b.rank)
	return h[off : off+n : off+n], nil
}

// Free returns a buffer from Alloc to the heap.
func (b *Backend) Free(buf []byte) error {
	if cap(buf) == 0 {
		return errors.New("shm: Free of an empty buffer")
	}
	z := b.heapOffset(buf[:1])
	if z == 0 {
		return errors.New("shm: Free of a buffer that is not in this rank's zero-copy heap")
	}
	return b.heap.release(int(z - 1))
}

// heapOf is rank r's heap.
func (b *Backend) heapOf(r int) []byte {
	o := b.lay.heap(r)
	return b.mem[o : o+b.lay.heapSize : o+b.lay.heapSize]
}

// heapOffset is 1 + the offset of buf in this rank's heap when all of buf
// lies there, else 0.
func (b *Backend) heapOffset(buf []byte) uint64 {
	if len(buf) == 0 || b.lay.heapSize == 0 || b.mem == nil {
		return 0
	}
	h := b.heapOf(b.rank)
	base := uintptr(unsafe.Pointer(unsafe.SliceData(h)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
	if p < base || p+uintptr(len(buf)) > base+uintptr(len(h)) {
		return 0
	}
	return uint64(p-base) + 1
}
