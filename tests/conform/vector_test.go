package conform

import (
	"fmt"

	"github.com/gocoll/gocoll/core"
)

// computeVector is memWorld's vector collectives, the obvious way: each
// output block is copied from the rank it comes from, at the offsets its
// counts and displacements give.
func computeVector(reqs []*core.Request) error {
	r0 := reqs[0]
	for _, q := range reqs[1:] {
		if q.Kind != r0.Kind || q.DType != r0.DType || q.Op != r0.Op || q.Root != r0.Root {
			return &core.MismatchError{Field: "request", Mine: fmt.Sprint(*r0), Theirs: fmt.Sprint(*q)}
		}
	}
	es := r0.DType.Size()
	part := func(b []byte, at, n int) []byte { return b[at*es : (at+n)*es] }
	for me, q := range reqs {
		if q.Recv == nil {
			continue
		}
		switch q.Kind {
		case core.KindAllgatherv, core.KindGatherv:
			ro := core.Offsets(q.RecvCounts, q.RecvDispls, nil)
			for j, c := range q.RecvCounts {
				copy(part(q.Recv, ro[j], c), reqs[j].Send)
			}
		case core.KindScatterv:
			root := reqs[q.Root]
			so := core.Offsets(root.SendCounts, root.SendDispls, nil)
			copy(q.Recv, part(root.Send, so[me], q.SendCounts[me]))
		case core.KindAlltoallv:
			ro := core.Offsets(q.RecvCounts, q.RecvDispls, nil)
			for j, c := range q.RecvCounts {
				so := core.Offsets(reqs[j].SendCounts, reqs[j].SendDispls, nil)
				copy(part(q.Recv, ro[j], c), part(reqs[j].Send, so[me], reqs[j].SendCounts[me]))
			}
		case core.KindReduceScatterV:
			po := core.Offsets(q.RecvCounts, nil, nil)
			srcs := make([][]byte, len(reqs))
			for j, p := range reqs {
				srcs[j] = append([]byte(nil), part(p.Send, po[me], q.RecvCounts[me])...)
			}
			k := core.LookupType(q.DType).Kernel(q.Op)
			k.Reduce(nil, q.Recv, srcs)
			k.Finish(q.Recv, len(reqs))
		}
	}
	return nil
}
