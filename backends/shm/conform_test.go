package shm

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"unsafe"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/internal/proctest"
	"github.com/gocoll/gocoll/tests/conform"
)

// Conformance goes through the one reference, tests/conform, with shm's own
// geometry: a small data buffer, so that sizes of exactly one buffer and
// 3.5 buffers exercise chunking and pipelining cheaply, and three ways of
// running the large paths: split allreduce above 1 KiB, direct allreduce
// at every size, and every input read in place from the zero-copy heap.

// confBuffer is the data-buffer size of the suite.
const confBuffer = 4096

// confMode is one way of running the suite.
type confMode struct {
	name       string
	small      int  // WithSmallThreshold
	reduceOnly bool // only the kinds the mode changes: those with an op
	zeroCopy   bool // inputs in the heap (heapComm)
}

var confModes = []confMode{
	{name: "split", small: 1024},
	{name: "direct", small: 1 << 30, reduceOnly: true},
	{name: "zerocopy", small: 1024, zeroCopy: true},
}

func (m confMode) options() []Option {
	return []Option{WithBufferSize(confBuffer), WithSmallThreshold(m.small), WithHeapSize(512 << 10), WithP2PBufferSize(4096)}
}

// runConformance runs the suite in mode m on one rank.
func runConformance(ctx context.Context, g *core.Guard, m confMode, random bool) error {
	var c core.Comm = g
	if m.zeroCopy {
		b := backend(g)
		b.zcMin = 1 // read every heap input in place, however small
		c = &heapComm{g: g, b: b}
	}
	opts := conform.Options{
		Sizes:    []int{0, 1, 33, 301},
		Bytes:    []int{confBuffer, confBuffer * 7 / 2},
		NoRandom: !random,
	}
	if random {
		opts.RandomSizes = []int{1, 301}
	}
	if m.reduceOnly {
		opts.Filter = func(c conform.Case) bool {
			s := c.Kind.Shape()
			return s != nil && s.Op
		}
	}
	return conform.Run(ctx, c, opts)
}

// heapComm copies every input into the rank's zero-copy heap before the
// call (an in-place call's buffer, output too) and the output back after,
// so that the suite checks the paths that read peers' inputs in place.
type heapComm struct {
	g *core.Guard
	b *Backend
}

func (h *heapComm) Rank() int { return h.g.Rank() }
func (h *heapComm) Size() int { return h.g.Size() }

func (h *heapComm) Do(ctx context.Context, req *core.Request) error {
	if len(req.Send) == 0 {
		return h.g.Do(ctx, req)
	}
	buf, err := h.b.Alloc(len(req.Send))
	if err != nil {
		return err
	}
	defer h.b.Free(buf)
	copy(buf, req.Send)
	q := *req
	q.Send = buf
	inPlace := len(req.Recv) == len(req.Send) && unsafe.SliceData(req.Recv) == unsafe.SliceData(req.Send)
	if inPlace {
		q.Recv = buf
	}
	if err := h.g.Do(ctx, &q); err != nil {
		return err
	}
	if inPlace {
		copy(req.Recv, buf)
	}
	return nil
}

func TestConformanceGoroutines(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4} {
		for _, m := range confModes {
			t.Run(fmt.Sprintf("np%d-%s", n, m.name), func(t *testing.T) {
				mustOK(t, goRanks(t, n, m.options(), func(ctx context.Context, g *core.Guard) error {
					return runConformance(ctx, g, m, n <= 2)
				}))
			})
		}
	}
}

func conformBody(ctx context.Context, r *proctest.Rank) error {
	for _, m := range confModes {
		g, err := newProcComm(ctx, r, "shm-"+m.name+"/", m.options()...)
		if err != nil {
			return err
		}
		err = runConformance(ctx, g, m, true)
		if cerr := g.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", m.name, err)
		}
	}
	return nil
}

func TestConformanceProcesses(t *testing.T) {
	nps := []int{2, 5}
	if testing.Short() {
		nps = []int{3}
	}
	for _, np := range nps {
		t.Run(strconv.Itoa(np), func(t *testing.T) {
			procRanks(t, "conform", np)
		})
	}
}
