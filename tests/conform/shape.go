package conform

import "github.com/gocoll/gocoll/core"

// shape is a collective's description from the runtime's shape table
// (core.Kind.Shape), in the form the runner uses. The runner builds
// requests and expectations from it alone; it never looks at names.
type shape struct {
	kind   core.Kind
	bufs   []bufShape
	op     bool // takes a reduce op
	root   bool // takes a root rank
	peer   bool // point to point: takes a peer rank
	result core.Result
	// resultOnRoot: only the root's output is defined.
	resultOnRoot bool
	inPlace      bool // Send may be exactly Recv
	// A vector collective's extents and vectors (core.Shape's); the
	// runner runs it apart (vector.go).
	vector                     bool
	sendExtent, recvExtent     core.Extent
	sendRootOnly, recvRootOnly bool
	sendCounts, recvCounts     bool
}

type bufShape struct {
	role    string // "send", "recv" or "inout"
	perRank bool   // count*size elements rather than count
	onRoot  bool   // only the root passes it; others pass nil
}

// shapes indexes core's shape table by kind.
func shapes() map[core.Kind]shape {
	m := map[core.Kind]shape{}
	for _, k := range core.Kinds() {
		cs := k.Shape()
		s := shape{kind: k, op: cs.Op, root: cs.Root, peer: cs.Peer, result: cs.Result,
			resultOnRoot: cs.ResultRootOnly, inPlace: cs.InPlace,
			vector: cs.Vector(), sendExtent: cs.Send, recvExtent: cs.Recv, sendRootOnly: cs.SendRootOnly, recvRootOnly: cs.RecvRootOnly,
			sendCounts: cs.SendCounts, recvCounts: cs.RecvCounts}
		switch {
		case cs.SendIsRecv:
			s.bufs = append(s.bufs, bufShape{role: "inout", perRank: cs.Recv == core.AllRanks, onRoot: cs.RecvRootOnly})
		default:
			if cs.Send != core.None {
				s.bufs = append(s.bufs, bufShape{role: "send", perRank: cs.Send == core.AllRanks, onRoot: cs.SendRootOnly})
			}
			if cs.Recv != core.None {
				s.bufs = append(s.bufs, bufShape{role: "recv", perRank: cs.Recv == core.AllRanks, onRoot: cs.RecvRootOnly})
			}
		}
		m[k] = s
	}
	return m
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

// inPlaceable reports whether a caller may pass one slice as send and recv.
func (s shape) inPlaceable() bool {
	in, out := s.input(), s.output()
	return s.inPlace && in >= 0 && out >= 0 && in != out
}

// sameEverywhere reports whether every rank's output must be identical
// (so that the ranks' hashes can be compared).
func (s shape) sameEverywhere() bool {
	switch s.result {
	case core.ResultReduce, core.ResultConcat, core.ResultRoot:
		return !s.resultOnRoot
	}
	return false
}
