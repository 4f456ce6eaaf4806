package conform

import (
	"fmt"

	"github.com/gocoll/gocoll/core"
)

// shape is a collective's description from the runtime's shapes
// (core.Kind.Shape), in the form the runner uses. The runner builds
// requests and expectations from it alone; it never looks at names.
type shape struct {
	kind   core.Kind
	bufs   []bufShape
	op     bool // takes a reduce op
	root   bool // takes a root rank
	peer   bool // point to point: takes a peer rank
	result string
	// resultOnRoot: only the root's output is defined.
	resultOnRoot bool
}

type bufShape struct {
	role    string // "send", "recv" or "inout"
	perRank bool   // count*size elements rather than count
	onRoot  bool   // only the root passes it; others pass nil
}

// Result kinds, as spec/collectives.yaml names them.
const (
	resNone        = "none"
	resReduce      = "reduce"
	resConcat      = "concat"
	resRoot        = "root"
	resReduceBlock = "reduce_block"
	resRootBlock   = "root_block"
	resTranspose   = "transpose"
	resPeer        = "peer"
)

// shapes indexes the runtime's collectives by kind.
func shapes() (map[core.Kind]shape, error) {
	m := map[core.Kind]shape{}
	for _, k := range core.Kinds() {
		sh := k.Shape()
		s := shape{kind: k, op: sh.Op, root: sh.Root, peer: sh.Peer}
		switch {
		case sh.SendIsRecv:
			s.bufs = append(s.bufs, bufShape{role: "inout", perRank: sh.Recv == core.AllRanks, onRoot: sh.RecvRootOnly})
		default:
			if sh.Send != core.None {
				s.bufs = append(s.bufs, bufShape{role: "send", perRank: sh.Send == core.AllRanks, onRoot: sh.SendRootOnly})
			}
			if sh.Recv != core.None {
				s.bufs = append(s.bufs, bufShape{role: "recv", perRank: sh.Recv == core.AllRanks, onRoot: sh.RecvRootOnly})
			}
		}
		// What each rank's output holds follows from the shape: a reduce op
		// with a recv block per rank leaves one block of the result on each;
		// without an op, a root spreads its data, a gather concatenates, a
		// point-to-point receive holds the peer's send.
		send, recv := sh.Send != core.None, sh.Recv != core.None
		switch {
		case !recv:
			s.result = resNone
		case sh.Op && sh.Send == core.AllRanks && sh.Recv == core.PerRank:
			s.result = resReduceBlock
		case sh.Op:
			s.result, s.resultOnRoot = resReduce, sh.RecvRootOnly
		case sh.SendIsRecv:
			s.result = resRoot
		case sh.Peer:
			s.result = resPeer
		case sh.Root && sh.Send == core.AllRanks:
			s.result = resRootBlock
		case send && sh.Send == core.AllRanks && sh.Recv == core.AllRanks:
			s.result = resTranspose
		case send && sh.Recv == core.AllRanks:
			s.result, s.resultOnRoot = resConcat, sh.RecvRootOnly
		default:
			return nil, fmt.Errorf("conform: %v: no result kind fits its shape %+v; update tests/conform", k, *sh)
		}
		m[k] = s
	}
	return m, nil
}

// input returns the index of the buffer holding this rank's contribution
// (role send or inout), or -1.
func (s shape) input() int {
	for i, b := range s.bufs {
		if b.role == "send" || b.role == "inout" {
			return i
		}
	}
	return -1
}

// output returns the index of the buffer holding the result (role recv or
// inout), or -1.
func (s shape) output() int {
	for i, b := range s.bufs {
		if b.role == "recv" || b.role == "inout" {
			return i
		}
	}
	return -1
}

// inPlaceable reports whether the send and recv buffers have the same size,
// so that a caller may pass one slice as both.
func (s shape) inPlaceable() bool {
	in, out := s.input(), s.output()
	return in >= 0 && out >= 0 && in != out && s.bufs[in].perRank == s.bufs[out].perRank
}

// sameEverywhere reports whether every rank's output must be identical
// (so that the ranks' hashes can be compared).
func (s shape) sameEverywhere() bool {
	switch s.result {
	case resReduce, resConcat, resRoot:
		return !s.resultOnRoot
	}
	return false
}
