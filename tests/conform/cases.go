package conform

import "github.com/gocoll/gocoll/core"

// Case is one combination a conformance run checks: a collective, an
// element type and, for collectives that reduce, an op (0 otherwise).
// Collectives that move no data have one case with DType 0.
type Case struct {
	Kind  core.Kind
	DType core.DType
	Op    core.Op
}

// Cases lists every combination the runtime runs with the dtypes and ops
// registered with it: collectives by id, dtypes by id, each dtype's ops
// by id.
func Cases() []Case {
	var cs []Case
	for _, k := range core.Kinds() {
		sh := k.Shape()
		if sh.Send == core.None && sh.Recv == core.None {
			cs = append(cs, Case{Kind: k})
			continue
		}
		for _, t := range core.Types() {
			if !sh.Op {
				cs = append(cs, Case{Kind: k, DType: t.ID})
				continue
			}
			for _, o := range t.Ops() {
				cs = append(cs, Case{Kind: k, DType: t.ID, Op: o.ID})
			}
		}
	}
	return cs
}
