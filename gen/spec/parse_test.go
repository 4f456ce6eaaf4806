package spec

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// base is a small valid spec; the broken specs below each change one thing.
const base = `package: coll
dtypes:
  - {name: float32, id: 1, size: 4, go: float32, accum: float32, class: float, ops: [sum, avg]}
  - {name: int32, id: 7, size: 4, go: int32, accum: int32, class: int, ops: [sum, band]}
  - {name: complex64, id: 64, size: 8, go: complex64, accum: complex64, class: complex, ops: [sum]}
ops:
  - {name: sum, id: 1, doc: "sum"}
  - {name: band, id: 5, doc: "and"}
  - {name: avg, id: 8, doc: "mean", finish: divide}
collectives:
  - name: reduce
    id: 2
    doc: Reduce reduces.
    buffers:
      - {name: send, role: send, count: count, on: all}
      - {name: recv, role: recv, count: count, on: root}
    op: true
    root: true
    result: {kind: reduce, on: root}
  - name: barrier
    id: 9
    doc: Barrier waits.
    buffers: []
    result: {kind: none, on: all}
`

func TestParseBase(t *testing.T) {
	s, err := Parse("base.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if s.Package != "coll" || len(s.DTypes) != 3 || len(s.Ops) != 3 || len(s.Collectives) != 2 {
		t.Fatalf("parsed %+v", s)
	}
	r := s.Collectives[0]
	if !r.Op || !r.Root || r.Peer || len(r.Buffers) != 2 || r.Buffers[1].On != "root" || r.Result != (Result{"reduce", "root"}) {
		t.Fatalf("reduce parsed as %+v", r)
	}
	if o, _ := s.Op("avg"); o.Finish != "divide" {
		t.Fatalf("avg parsed as %+v", o)
	}
	if d, _ := s.DType("int32"); !d.Supports("band") || d.Supports("avg") || d.Title() != "Int32" {
		t.Fatalf("int32 parsed as %+v", d)
	}
}

func TestParseBroken(t *testing.T) {
	for _, c := range []struct {
		name, old, new string
		at             string // the error is at the first occurrence of at in the broken spec
		want           string // a fragment of its message
	}{
		{"unknown top key", "package: coll", "package: coll\nversion: 2", "version", "spec: unknown key \"version\""},
		{"missing top key", "package: coll\n", "", "dtypes", "spec: missing key \"package\"; add package: <Go package name>"},
		{"bad package", "package: coll", "package: Coll", "Coll", "package \"Coll\" must be a lower-case Go identifier"},
		{"keyword package", "package: coll", "package: func", "func", "package \"func\" must be"},
		{"unknown dtype key", "accum: int32,", "accum: int32, bits: 32,", "bits", "dtype \"int32\": unknown key \"bits\"; allowed keys are name, id, size, go, accum, class, ops"},
		{"typo key suggests", "class: int,", "clas: int,", "clas: int", "unknown key \"clas\"; allowed keys are name, id, size, go, accum, class, ops (did you mean \"class\"?)"},
		{"missing dtype field", "size: 4, go: int32", "go: int32", "name: int32", "dtype \"int32\": missing key \"size\"; add size: <bytes per element: 1, 2, 4 or 8>"},
		{"mistyped id", "id: 7,", "id: \"7\",", "\"7\"", "dtype \"int32\" id must be an integer in 1..255, not a string"},
		{"id out of range", "id: 7,", "id: 300,", "300", "dtype \"int32\" id is 300; it must be in 1..255"},
		{"mistyped ops", "ops: [sum, band]}", "ops: sum}", "sum}", "dtype \"int32\" ops must be a list, not a string"},
		{"unknown op in dtype", "ops: [sum, band]", "ops: [sum, bnad]", "bnad", "dtype \"int32\" lists unknown op \"bnad\"; define it under ops: or use one of sum, band, avg (did you mean \"band\"?)"},
		{"op twice in dtype", "ops: [sum, band]", "ops: [sum, sum]", "sum]", "dtype \"int32\" lists op \"sum\" twice; remove one"},
		{"op wrong class", "ops: [sum, band]", "ops: [sum, avg]", "avg]}\n  - {name: complex64", "dtype \"int32\": op \"avg\" does not apply to class int (it applies to float, complex); remove it"},
		{"unknown go type", "go: int32,", "go: int33,", "int33", "dtype \"int32\" go type is \"int33\"; it must be one of BFloat16, Float16, complex64, float32, float64, int16, int32, int64, int8, uint16, uint32, uint64, uint8 (did you mean \"int32\"?)"},
		{"size disagrees", "size: 4, go: int32", "size: 2, go: int32", "int32, accum", "dtype \"int32\": go type int32 is 4 bytes but size is 2; make them agree"},
		{"class disagrees", "class: int,", "class: uint,", "int32, accum", "dtype \"int32\": go type int32 is of class int but class is uint; make them agree"},
		{"bad accum", "accum: int32,", "accum: int64,", "int64", "dtype \"int32\": accum \"int64\" is not supported for go type int32; use int32"},
		{"unknown class", "class: int,", "class: integer,", "integer", "dtype \"int32\" class is \"integer\"; it must be one of float, int, uint, complex"},
		{"duplicate dtype name", "  - {name: complex64, id: 64", "  - {name: complex64, id: 65, size: 8, go: complex64, accum: complex64, class: complex, ops: [sum]}\n  - {name: complex64, id: 64", "name: complex64, id: 64", "dtype \"complex64\" is defined twice (first at line 5); remove one"},
		{"duplicate dtype id", "  - {name: complex64, id: 64", "  - {name: cplx, id: 64, size: 8, go: complex64, accum: complex64, class: complex, ops: [sum]}\n  - {name: complex64, id: 64", "name: complex64", "dtype \"complex64\" reuses id 64 (already used at line 5); ids must be unique"},
		{"builtin dtype id", "name: int32, id: 7", "name: int32, id: 8", "8, size", "dtype \"int32\" id is 8, but int32 is gocoll's dtype 7 in every spec; write id: 7"},
		{"builtin dtype go type", "{name: float32, id: 1, size: 4, go: float32,", "{name: bfloat16, id: 3, size: 2, go: Float16,", "Float16", "dtype \"bfloat16\" go type is Float16, but gocoll's bfloat16 is BFloat16 in every spec; write go: BFloat16"},
		{"own dtype id below 64", "name: complex64, id: 64", "name: complex64, id: 11", "11", "dtype \"complex64\" id is 11, but ids below 64 are gocoll's own dtypes'; give a dtype of this spec an id in 64..255"},
		{"complex op", "class: complex, ops: [sum]", "class: complex, ops: [sum, band]", "band]}\nops", "dtype \"complex64\": op \"band\" does not apply to class complex"},
		{"duplicate yaml key", "id: 7,", "id: 7, id: 8,", "id: 8", "YAML syntax: mapping key \"id\" already defined"},
		{"unknown op name", "{name: band, id: 5", "{name: nand, id: 5", "nand", "unknown op \"nand\": the generators implement avg, band, bor, bxor, max, min, prod, sum (did you mean \"band\"?)"},
		{"op id not the runtime's", "{name: band, id: 5", "{name: band, id: 6", "6, doc", "op \"band\" id is 6, but the runtime's band is id 5 in every spec; write id: 5"},
		{"duplicate op", "{name: band, id: 5", "{name: sum, id: 1", "name: sum, id: 1, doc: \"and", "op \"sum\" is defined twice (first at line 7); remove one"},
		{"bad finish", "finish: divide", "finish: halve", "halve", "op \"avg\" finish is \"halve\"; it must be one of divide"},
		{"missing op doc", ", doc: \"and\"", "", "name: band", "op \"band\": missing key \"doc\"; add doc: <one-sentence description>"},
		{"bad role", "role: recv", "role: output", "output", "collective \"reduce\" buffers[1] role is \"output\"; it must be one of send, recv, inout"},
		{"bad count", "recv, count: count,", "recv, count: count*2,", "count*2", "collective \"reduce\" buffers[1] count is \"count*2\"; it must be one of count, count*size"},
		{"bad on", "count: count, on: root}", "count: count, on: some}", "some", "collective \"reduce\" buffers[1] on is \"some\"; it must be one of all, root"},
		{"on root without root", "    root: true\n", "", "root}\n", "collective \"reduce\" buffers[1] is on root but collective \"reduce\" has no root; add root: true or use on: all"},
		{"duplicate buffer", "{name: recv, role: recv", "{name: send, role: recv", "send, role: recv", "collective \"reduce\": buffer name \"send\" is used twice; rename one"},
		{"reserved buffer name", "{name: recv, role: recv", "{name: op, role: recv", "op, role", "collective \"reduce\" buffers[1] name \"op\" must be a Go identifier that is not a keyword nor one of ctx, c, op, root, peer"},
		{"two senders", "{name: recv, role: recv", "{name: recv, role: send", "send, count: count, on: root", "collective \"reduce\" has two buffers that send (send or inout); a collective has at most one"},
		{"mistyped bool", "op: true", "op: yes please", "yes please", "collective \"reduce\" op must be true or false, not a string"},
		{"bad result kind", "kind: reduce,", "kind: reduced,", "reduced", "collective \"reduce\" result kind is \"reduced\"; it must be one of concat, none, peer, reduce, reduce_block, root, root_block, transpose (did you mean \"reduce\"?)"},
		{"result needs op", "    op: true\n", "", "reduce, on", "collective \"reduce\": result kind reduce needs op, which collective \"reduce\" lacks; add op: true"},
		{"missing result", "    result: {kind: reduce, on: root}\n", "", "name: reduce", "collective \"reduce\": missing key \"result\"; add result: <{kind: ..., on: ...}>"},
		{"result not a mapping", "result: {kind: none, on: all}", "result: none", "none\n", "collective \"barrier\" result must be a mapping with keys kind, on, not a string"},
		{"collective id not the runtime's", "id: 9", "id: 2", "name: barrier", "collective \"barrier\": barrier is the runtime's collective of that name and must be described as the runtime runs it: id 9, buffers none, result {kind: none, on: all} (this spec says id 2,"},
		{"collective shape not the runtime's", "{name: recv, role: recv, count: count, on: root}", "{name: recv, role: recv, count: count*size, on: root}", "name: reduce", "reduce is the runtime's collective of that name and must be described as the runtime runs it: id 2, op: true, root: true, buffers {role: recv, count: count, on: root}, {role: send, count: count, on: all}, result {kind: reduce, on: root} (this spec says"},
		{"collective unknown to the runtime", "name: barrier", "name: barrierr", "name: barrierr", "collective \"barrierr\": the runtime runs no collective \"barrierr\"; a spec picks from allgather, allgatherv, allreduce, alltoall, alltoallv, barrier, broadcast, gather, gatherv, recv, reduce, reduce_scatter, reduce_scatter_v, scatter, scatterv, send (did you mean \"barrier\"?)"},
		{"bad collective name", "name: barrier", "name: Barrier", "Barrier\n", "collectives[1] name \"Barrier\" must be lower_case"},
		{"root and peer", "    root: true\n", "    root: true\n    peer: true\n", "true\n    result", "collective \"reduce\" takes both a root and a peer; a collective is rooted or point to point, not both"},
		{"no buffer on all", "{name: send, role: send, count: count, on: all}", "{name: send, role: send, count: count, on: root}", "- {name: send, role: send, count: count, on: root}", "no buffer is on all ranks"},
		{"alias", "doc: Barrier waits.", "doc: *x", "*x", "aliases (*name) are not supported in a spec: write the value out"},
		{"syntax error", "  - name: barrier", "  - name: barrier\n  oops: [", "oops", "YAML syntax:"},
		{"empty", "", "", "", "the spec must be one YAML document"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(base, c.old) {
				t.Fatalf("base has no %q", c.old)
			}
			src := strings.Replace(base, c.old, c.new, 1)
			if c.name == "empty" {
				src = ""
			}
			_, err := Parse("x.yaml", []byte(src))
			if err == nil {
				t.Fatalf("no error for:\n%s", src)
			}
			// Where the error must point: the first occurrence of c.at.
			line, col := 1, 1
			if i := strings.Index(src, c.at); i >= 0 && c.at != "" {
				line = strings.Count(src[:i], "\n") + 1
				col = i - strings.LastIndex(src[:i], "\n")
			}
			want := fmt.Sprintf("x.yaml:%d:%d: ", line, col)
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, want an ErrorList", err)
			}
			for _, e := range list {
				if strings.HasPrefix(e.Error(), want) && strings.Contains(e.Msg, c.want) {
					return
				}
			}
			t.Fatalf("errors:\n%v\nwant one at %s containing:\n%s", err, want, c.want)
		})
	}
}

// TestParseVectorShape checks that a vector collective must be described
// as the runtime runs it: a missing displacement vector is refused.
func TestParseVectorShape(t *testing.T) {
	good := `package: x
dtypes:
  - {name: float32, id: 1, size: 4, go: float32, accum: float32, class: float, ops: [sum]}
ops:
  - {name: sum, id: 1, doc: "sum"}
collectives:
  - name: allgatherv
    id: 12
    doc: d
    buffers:
      - {name: send, role: send, count: "counts[rank]", on: all}
      - {name: recv, role: recv, count: counts, on: all}
    vectors:
      - {name: counts, of: recv}
      - {name: displs, of: recv, displs: true}
    result: {kind: concat, on: all}
`
	if _, err := Parse("x.yaml", []byte(good)); err != nil {
		t.Fatalf("the runtime's allgatherv refused: %v", err)
	}
	bad := strings.Replace(good, "      - {name: displs, of: recv, displs: true}\n", "", 1)
	_, err := Parse("x.yaml", []byte(bad))
	if err == nil || !strings.Contains(err.Error(), "vectors {of: recv, counts}, {of: recv, displs}") {
		t.Fatalf("allgatherv without displacements: %v, want the runtime's shape named", err)
	}
}
