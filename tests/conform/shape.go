package conform

import (
	"fmt"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// shape is a collective's description from the spec's shape table
// (coll.Collectives), in the form the runner uses. The runner builds
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

// Result kinds of spec/collectives.yaml.
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

// shapes indexes coll.Collectives by kind.
func shapes() (map[core.Kind]shape, error) {
	m := map[core.Kind]shape{}
	for _, ci := range coll.Collectives {
		s := shape{
			kind:         ci.Kind,
			op:           ci.Op,
			root:         ci.Root,
			peer:         ci.Peer,
			result:       ci.Result.Kind,
			resultOnRoot: ci.Result.On == "root",
		}
		for _, b := range ci.Buffers {
			bs := bufShape{role: b.Role, perRank: b.Count == "count*size", onRoot: b.On == "root"}
			switch {
			case b.Role != "send" && b.Role != "recv" && b.Role != "inout":
				return nil, fmt.Errorf("conform: %v: buffer %q has role %q, which this runner does not know; update tests/conform", ci.Kind, b.Name, b.Role)
			case b.Count != "count" && b.Count != "count*size":
				return nil, fmt.Errorf("conform: %v: buffer %q has count %q, which this runner does not know; update tests/conform", ci.Kind, b.Name, b.Count)
			}
			s.bufs = append(s.bufs, bs)
		}
		switch s.result {
		case resNone, resReduce, resConcat, resRoot, resReduceBlock, resRootBlock, resTranspose, resPeer:
		default:
			return nil, fmt.Errorf("conform: %v: result kind %q is unknown to this runner; update tests/conform", ci.Kind, s.result)
		}
		m[s.kind] = s
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
