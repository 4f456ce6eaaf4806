package spec

import (
	"fmt"
	"sort"
	"strings"
)

// FirstDownstreamID is the first dtype id a spec may give a dtype of its
// own. Ids below it are gocoll's (spec/collectives.yaml): every spec's
// kernels register with the one runtime, so an id means one dtype in
// every spec, and a downstream spec keeps gocoll's ids for gocoll's
// dtypes and numbers its own from here up to 255.
const FirstDownstreamID = 64

// Builtin is one of gocoll's own dtypes: its id and Go type.
type Builtin struct {
	ID int
	Go string
}

// BuiltinDTypes are gocoll's dtypes by name. A spec that lists one must
// give it this id and Go type.
var BuiltinDTypes = map[string]Builtin{
	"float32":  {1, "float32"},
	"float64":  {2, "float64"},
	"bfloat16": {3, "BFloat16"},
	"float16":  {4, "Float16"},
	"int8":     {5, "int8"},
	"uint8":    {6, "uint8"},
	"int32":    {7, "int32"},
	"uint32":   {8, "uint32"},
	"int64":    {9, "int64"},
	"uint64":   {10, "uint64"},
}

// BuiltinOps are the ids of the reduce ops (all of KnownOps): an op is
// the runtime's, so every spec gives it the same id.
var BuiltinOps = map[string]int{
	"sum": 1, "prod": 2, "min": 3, "max": 4, "band": 5, "bor": 6, "bxor": 7, "avg": 8,
}

// RuntimeCollectives are the collectives gocoll's runtime runs (package
// core's Kind and Kind.Shape), as a spec describes them. A spec picks a
// subset of them by name and must describe each exactly so: the id is
// what the backends dispatch on and the shape is what they run. Buffer
// names are the spec's to choose (they name the typed API's parameters),
// as are their order and the docs. The generated typed API's test compares
// the spec's shapes with core's, so this table cannot drift from the
// runtime unnoticed.
var RuntimeCollectives = map[string]Collective{
	"allreduce": {ID: 1, Op: true, Buffers: []Buffer{{"send", "send", "count", "all"}, {"recv", "recv", "count", "all"}},
		Result: Result{"reduce", "all"}},
	"reduce": {ID: 2, Op: true, Root: true, Buffers: []Buffer{{"send", "send", "count", "all"}, {"recv", "recv", "count", "root"}},
		Result: Result{"reduce", "root"}},
	"broadcast": {ID: 3, Root: true, Buffers: []Buffer{{"buf", "inout", "count", "all"}},
		Result: Result{"root", "all"}},
	"allgather": {ID: 4, Buffers: []Buffer{{"send", "send", "count", "all"}, {"recv", "recv", "count*size", "all"}},
		Result: Result{"concat", "all"}},
	"reduce_scatter": {ID: 5, Op: true, Buffers: []Buffer{{"send", "send", "count*size", "all"}, {"recv", "recv", "count", "all"}},
		Result: Result{"reduce_block", "all"}},
	"gather": {ID: 6, Root: true, Buffers: []Buffer{{"send", "send", "count", "all"}, {"recv", "recv", "count*size", "root"}},
		Result: Result{"concat", "root"}},
	"scatter": {ID: 7, Root: true, Buffers: []Buffer{{"send", "send", "count*size", "root"}, {"recv", "recv", "count", "all"}},
		Result: Result{"root_block", "all"}},
	"alltoall": {ID: 8, Buffers: []Buffer{{"send", "send", "count*size", "all"}, {"recv", "recv", "count*size", "all"}},
		Result: Result{"transpose", "all"}},
	"barrier": {ID: 9, Result: Result{"none", "all"}},
	"send": {ID: 10, Peer: true, Buffers: []Buffer{{"buf", "send", "count", "all"}},
		Result: Result{"none", "all"}},
	"recv": {ID: 11, Peer: true, Buffers: []Buffer{{"buf", "recv", "count", "all"}},
		Result: Result{"peer", "all"}},
	"allgatherv": {ID: 12, Buffers: []Buffer{{"send", "send", "counts[rank]", "all"}, {"recv", "recv", "counts", "all"}},
		Vectors: []Vector{{"recvCounts", "recv", false}, {"displs", "recv", true}},
		Result:  Result{"concat", "all"}},
	"gatherv": {ID: 13, Root: true, Buffers: []Buffer{{"send", "send", "counts[rank]", "all"}, {"recv", "recv", "counts", "root"}},
		Vectors: []Vector{{"recvCounts", "recv", false}, {"displs", "recv", true}},
		Result:  Result{"concat", "root"}},
	"scatterv": {ID: 14, Root: true, Buffers: []Buffer{{"send", "send", "counts", "root"}, {"recv", "recv", "counts[rank]", "all"}},
		Vectors: []Vector{{"sendCounts", "send", false}, {"displs", "send", true}},
		Result:  Result{"root_block", "all"}},
	"alltoallv": {ID: 15, Buffers: []Buffer{{"send", "send", "counts", "all"}, {"recv", "recv", "counts", "all"}},
		Vectors: []Vector{{"sendCounts", "send", false}, {"sendDispls", "send", true}, {"recvCounts", "recv", false}, {"recvDispls", "recv", true}},
		Result:  Result{"transpose", "all"}},
	"reduce_scatter_v": {ID: 16, Op: true, Buffers: []Buffer{{"send", "send", "sum(counts)", "all"}, {"recv", "recv", "counts[rank]", "all"}},
		Vectors: []Vector{{"recvCounts", "recv", false}},
		Result:  Result{"reduce_block", "all"}},
}

// shapeText describes c's shape (not its name, doc or buffer names) in
// the spec's words, buffers sorted by role.
func shapeText(c Collective) string {
	var parts []string
	parts = append(parts, fmt.Sprintf("id %d", c.ID))
	for _, f := range []struct {
		on   bool
		name string
	}{{c.Op, "op"}, {c.Root, "root"}, {c.Peer, "peer"}} {
		if f.on {
			parts = append(parts, f.name+": true")
		}
	}
	var bufs []string
	for _, b := range c.Buffers {
		bufs = append(bufs, fmt.Sprintf("{role: %s, count: %s, on: %s}", b.Role, b.Count, b.On))
	}
	sort.Strings(bufs)
	if len(bufs) == 0 {
		bufs = []string{"none"}
	}
	parts = append(parts, "buffers "+strings.Join(bufs, ", "))
	var vecs []string
	for _, v := range c.Vectors {
		what := "counts"
		if v.Displs {
			what = "displs"
		}
		vecs = append(vecs, fmt.Sprintf("{of: %s, %s}", v.Of, what))
	}
	sort.Strings(vecs)
	if len(vecs) > 0 {
		parts = append(parts, "vectors "+strings.Join(vecs, ", "))
	}
	parts = append(parts, fmt.Sprintf("result {kind: %s, on: %s}", c.Result.Kind, c.Result.On))
	return strings.Join(parts, ", ")
}

// runtimeMismatch says how c differs from the runtime's collective of its
// name, or "" if it does not.
func runtimeMismatch(c Collective) string {
	rt, ok := RuntimeCollectives[c.Name]
	if !ok {
		names := sortedKeys(RuntimeCollectives)
		return fmt.Sprintf("the runtime runs no collective %q; a spec picks from %s%s", c.Name, strings.Join(names, ", "), suggest(c.Name, names))
	}
	if got, want := shapeText(c), shapeText(rt); got != want {
		return fmt.Sprintf("%s is the runtime's collective of that name and must be described as the runtime runs it: %s (this spec says %s)", c.Name, want, got)
	}
	return ""
}
