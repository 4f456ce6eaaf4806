package shm

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/gocoll/gocoll/core"
)

// The workspace, one shared mapping laid out as:
//
//	header      4 KiB: magic, geometry, algorithm parameters
//	ctrl        three 128-byte-spaced lines per rank (two hot, one cold)
//	chans       two 128-byte lines per ordered pair of ranks (send/recv)
//	data        two buffers per rank, bufferSize each
//	p2p data    two buffers per ordered pair, p2pSize each
//	heaps       heapSize per rank (Alloc)
//
// Each control line has a single writer (its owner) except the sleepers
// counter, which waiters touch only on the slow path; lines are 128 bytes
// apart so that the adjacent-line prefetcher does not make neighbours share.
const (
	lineSize   = 128
	pageSize   = 4096
	headerSize = pageSize
	magic      = 0x4c4f43434f474d53 // "SMGOCCOL" little-endian
	version    = 4
	// ctrlLines is how many lines apart ranks' control lines lie: two hot
	// lines and a cold one.
	ctrlLines = 3
)

// header is the first bytes of the workspace, written by rank 0 before any
// peer maps it.
type header struct {
	magic          uint64
	version        uint64
	size           uint64 // ranks
	total          uint64 // bytes of the whole workspace
	bufferSize     uint64
	smallThreshold uint64
	p2pSize        uint64
	heapSize       uint64
	nonce          [4]uint64 // random: tells this job's workspace from any other
}

// desc is what a rank publishes about the collective a round belongs to, so
// that peers detect disagreement before they touch its data.
type desc struct {
	coll  uint64 // collective number on this backend (1-based)
	what  uint64 // kind | dtype<<8 | op<<16 | descInvalid for a refused call
	count uint64
	root  uint64
	zc    uint64 // 1 + offset of the send buffer in the rank's heap, or 0
}

// inlineMax is the side data a round carries in its hot line.
const inlineMax = 16

// hotLine is what a rank publishes for the rounds of one parity, in one
// 64-byte cache line: the round's number, its descriptor and a few bytes
// of side data (alltoallv's count check, vcoll.go), so that a waiter gets
// them with the one line transfer it waits for anyway. Each rank has two
// (rounds alternate between them).
type hotLine struct {
	seq      uint64 // last round of this parity published; futex on its low 32 bits
	sleepers uint32 // waiters asleep on seq
	what     uint32 // descriptor: kind | dtype<<8 | op<<16 | descInvalid
	coll     uint64 // descriptor: collective number
	count    uint64 // descriptor: count
	root     uint64 // descriptor: root
	zc       uint64 // 1 + heap offset of the rank's zero-copy input, or 0
	inline   [inlineMax]byte
}

func (h *hotLine) setDesc(d desc) {
	h.what, h.coll, h.count, h.root, h.zc = uint32(d.what), d.coll, d.count, d.root, d.zc
}

func (h *hotLine) desc() desc {
	return desc{coll: h.coll, what: uint64(h.what), count: h.count, root: h.root, zc: h.zc}
}

// coldLine is a rank's state: live, closed, or failed and why.
type coldLine struct {
	state  uint32 // stateLive, stateClosed, stateFailed
	cpu    uint32 // 1 + the CPU the rank last waited on, 0 = unknown (see cpu.go)
	failed uint64 // 1 + the rank this one saw fail
	cause  uint64 // why: one of the causes in wait.go
}

// chanLine is one side of a send/recv channel between two ranks: the
// sender's line counts published chunks and describes them, the receiver's
// counts consumed chunks and breaks a message that does not match (see
// p2p.go).
type chanLine struct {
	seq      uint64
	sleepers uint32
	_        uint32
	brk      uint64       // receiver: the count both sides resume from after the last broken message; 0: none yet
	hdr      [2][3]uint64 // sender: per buffer {message, dtype, count}; receiver: hdr[0] = its own of the last broken message
}

const (
	stateLive   = 0
	stateClosed = 1
	stateFailed = 2
)

func init() {
	if unsafe.Sizeof(hotLine{}) != 64 || unsafe.Sizeof(coldLine{}) > lineSize || unsafe.Sizeof(chanLine{}) > lineSize || unsafe.Sizeof(header{}) > headerSize {
		panic("shm: control structures outgrew their lines")
	}
}

// layout holds the workspace geometry, identical on every rank.
type layout struct {
	n              int
	bufferSize     int
	smallThreshold int
	p2pSize        int
	heapSize       int

	ctrlOff, chanOff, dataOff, p2pOff, heapOff, total int
}

func roundUp(x, m int) int { return (x + m - 1) / m * m }

// newLayout computes the geometry for n ranks from cfg.
func newLayout(n int, cfg config) (layout, error) {
	l := layout{
		n: n,
		// Every block-wise round must carry at least one 8-byte element
		// of each of the n blocks.
		bufferSize: roundUp(max(cfg.bufferSize, 64*n), pageSize),
		heapSize:   roundUp(cfg.heapSize, pageSize),
	}
	l.smallThreshold = cfg.smallThreshold
	if !cfg.smallSet {
		l.smallThreshold = defaultSmallThreshold(n)
	}
	// n² channels: keep their total near 16 MiB for large groups, but
	// never below half the eager size (a channel's two buffers hold an
	// eager message: p2p.go), unless the option asked for less.
	p := cfg.p2pSize
	if n > 1 {
		p = min(p, max(core.EagerSize/2, (16<<20)/(2*n*n)))
	}
	l.p2pSize = roundUp(p, pageSize)
	if err := l.place(); err != nil {
		return layout{}, err
	}
	return l, nil
}

func (l *layout) place() error {
	const maxTotal = 1 << 46
	n := l.n
	if n < 1 || n > 1<<16 || l.bufferSize > maxTotal || l.heapSize > maxTotal || l.p2pSize > maxTotal {
		return fmt.Errorf("shm: workspace geometry out of range (%d ranks, buffers %d, heap %d)", n, l.bufferSize, l.heapSize)
	}
	l.ctrlOff = headerSize
	l.chanOff = l.ctrlOff + n*ctrlLines*lineSize
	l.dataOff = roundUp(l.chanOff+2*n*n*lineSize, pageSize)
	l.p2pOff = l.dataOff + 2*n*l.bufferSize
	pairs := 0
	if n > 1 {
		pairs = n * n
	}
	l.heapOff = l.p2pOff + 2*pairs*l.p2pSize
	total := float64(l.heapOff) + float64(n)*float64(l.heapSize)
	if total > maxTotal || total > math.MaxInt/2 {
		return fmt.Errorf("shm: workspace of %.0f bytes is too large", total)
	}
	l.total = l.heapOff + n*l.heapSize
	return nil
}

func (l *layout) header() header {
	return header{
		magic: magic, version: version, size: uint64(l.n), total: uint64(l.total),
		bufferSize: uint64(l.bufferSize), smallThreshold: uint64(l.smallThreshold),
		p2pSize: uint64(l.p2pSize), heapSize: uint64(l.heapSize),
	}
}

// layoutFromHeader rebuilds rank 0's geometry on a peer and checks it fits
// the mapping of total bytes.
func layoutFromHeader(h *header, n int, total int) (layout, error) {
	if h.magic != magic || h.version != version {
		return layout{}, fmt.Errorf("shm: workspace has magic %#x version %d, want %#x version %d: ranks run different gocoll versions", h.magic, h.version, uint64(magic), version)
	}
	if h.size != uint64(n) {
		return layout{}, fmt.Errorf("shm: rank 0 built the workspace for %d ranks, this rank was told %d", h.size, n)
	}
	l := layout{n: n, bufferSize: int(h.bufferSize), smallThreshold: int(h.smallThreshold),
		p2pSize: int(h.p2pSize), heapSize: int(h.heapSize)}
	if err := l.place(); err != nil {
		return layout{}, err
	}
	if l.total != int(h.total) || l.total != total {
		return layout{}, fmt.Errorf("shm: workspace header says %d bytes, geometry gives %d, mapping has %d", h.total, l.total, total)
	}
	return l, nil
}

func (l *layout) hot(r, p int) int      { return l.ctrlOff + (r*ctrlLines+p)*lineSize }
func (l *layout) cold(r int) int        { return l.ctrlOff + (r*ctrlLines+2)*lineSize }
func (l *layout) chanSend(s, d int) int { return l.chanOff + (2*(s*l.n+d))*lineSize }
func (l *layout) chanRecv(s, d int) int { return l.chanOff + (2*(s*l.n+d)+1)*lineSize }
func (l *layout) slot(r, p int) int     { return l.dataOff + (2*r+p)*l.bufferSize }
func (l *layout) p2p(s, d, h int) int   { return l.p2pOff + (2*(s*l.n+d)+h)*l.p2pSize }
func (l *layout) heap(r int) int        { return l.heapOff + r*l.heapSize }

// defaultSmallThreshold is where split allreduce overtakes direct for n
// ranks. Two ranks: never (direct reads 2 inputs, split reads 2 and copies
// once more). More: direct makes each rank read n inputs, so the crossover
// falls with n (BenchmarkTune finds it on a given machine).
func defaultSmallThreshold(n int) int {
	if n <= 2 {
		return 1 << 62
	}
	return min(DefaultSmallThreshold, (192<<10)/n)
}
