package gen

import (
	"fmt"
	"strings"

	"github.com/gocoll/gocoll/gen/spec"
)

// collTest is the typed API's test file: every collective x dtype through a
// communicator that records the core.Request it is handed, checked against
// the collective's shape (kind, dtype, op, count, root, peer, which buffer
// goes where, nil off the root), and every way a call can be refused
// before any data moves. It is generated from the shapes, like the API.
func collTest(s *spec.Spec) string {
	var b strings.Builder
	b.WriteString("// " + Header(s) + "\n\npackage " + s.Package + `

import (
	"context"
	"errors"
	"testing"
	"unsafe"

	"github.com/gocoll/gocoll/core"
)

// recorder is a core.Comm that records requests instead of running them.
type recorder struct {
	rank, size int
	reqs       []core.Request
}

func (r *recorder) Rank() int { return r.rank }
func (r *recorder) Size() int { return r.size }
func (r *recorder) Do(_ context.Context, req *core.Request) error {
	r.reqs = append(r.reqs, *req)
	return nil
}

// last returns the one request recorded since the previous call.
func (r *recorder) last(t *testing.T) core.Request {
	t.Helper()
	if len(r.reqs) != 1 {
		t.Fatalf("%d requests reached the communicator, want 1", len(r.reqs))
	}
	req := r.reqs[0]
	r.reqs = nil
	return req
}

// none checks that a refused call handed nothing to the communicator.
func (r *recorder) none(t *testing.T) {
	t.Helper()
	if len(r.reqs) != 0 {
		t.Fatalf("a refused call reached the communicator: %+v", r.reqs)
	}
}

// sameBytes checks that got is exactly want's memory (or both nil).
func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if (got == nil) != (want == nil) || len(got) != len(want) || unsafe.SliceData(got) != unsafe.SliceData(want) {
		t.Fatalf("%s: got %d bytes at %p (nil %v), want %d bytes at %p (nil %v)", what, len(got), unsafe.SliceData(got), got == nil, len(want), unsafe.SliceData(want), want == nil)
	}
}

func TestTables(t *testing.T) {
	if len(Collectives) != ` + fmt.Sprint(len(s.Collectives)) + ` || len(DTypes) != ` + fmt.Sprint(len(s.DTypes)) + ` || len(Ops) != ` + fmt.Sprint(len(s.Ops)) + ` {
		t.Fatalf("tables have %d collectives, %d dtypes, %d ops", len(Collectives), len(DTypes), len(Ops))
	}
	for _, c := range Cases {
		if c.Op != 0 && !Supports(c.DType, c.Op) {
			t.Errorf("case %v %v %v: dtype does not support op", c.Kind, c.DType, c.Op)
		}
		if c.Kind.String() == "" || (c.DType != 0 && c.DType.Size() == 0) {
			t.Errorf("case %+v: ids not registered with core", c)
		}
	}
	for _, d := range DTypes {
		if d.ID.Size() != d.Size || d.ID.String() != d.Name {
			t.Errorf("dtype %s: core has size %d name %q", d.Name, d.ID.Size(), d.ID.String())
		}
		for _, o := range Ops {
			want := false
			for _, op := range d.Ops {
				want = want || op == o.ID
			}
			if Supports(d.ID, o.ID) != want {
				t.Errorf("Supports(%s, %s) = %v, want %v", d.Name, o.Name, !want, want)
			}
		}
	}
}
`)
	for _, c := range s.Collectives {
		if len(c.Buffers) == 0 {
			collTestFunc(&b, s, c, nil)
			continue
		}
		for _, d := range s.DTypes {
			d := d
			collTestFunc(&b, s, c, &d)
		}
	}
	return b.String()
}

func collTestFunc(b *strings.Builder, s *spec.Spec, c spec.Collective, d *spec.DType) {
	name := c.Title()
	if d != nil {
		name += d.Title()
	}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("\nfunc Test%s(t *testing.T) {\n\tctx := context.Background()\n\tconst count, size = 5, 3\n", name)
	var op string
	if c.Op {
		o, _ := s.Op(d.Ops[0])
		op = opConst(o)
	}
	// lens returns the buffer lengths, with bad (index) one element longer.
	p("\tfor rank := 0; rank < size; rank++ {\n")
	p("\t\trc := &recorder{rank: rank, size: size}\n")
	if c.Root {
		p("\t\troot := 1\n")
	}
	if c.Peer {
		p("\t\tpeer := (rank + 1) %% size\n")
	}
	p("\t\tcall := func(bad int) (%serror) {\n", strings.Repeat("[]"+orNil(d)+", ", len(c.Buffers)))
	var args []string
	args = append(args, "ctx", "rc")
	for i, buf := range c.Buffers {
		n := "count"
		if buf.Count == "count*size" {
			n = "count * size"
		}
		p("\t\t\tl%d := %s\n\t\t\tif bad == %d {\n\t\t\t\tl%d++\n\t\t\t}\n\t\t\t%s := make([]%s, l%d)\n", i, n, i, i, buf.Name, d.Go, i)
		args = append(args, buf.Name)
	}
	if c.Op {
		args = append(args, op)
	}
	if c.Root {
		args = append(args, "root")
	}
	if c.Peer {
		args = append(args, "peer")
	}
	var rets []string
	for _, buf := range c.Buffers {
		rets = append(rets, buf.Name)
	}
	rets = append(rets, fmt.Sprintf("%s(%s)", name, strings.Join(args, ", ")))
	p("\t\t\treturn %s\n\t\t}\n", strings.Join(rets, ", "))

	// The valid call.
	var vars []string
	for _, buf := range c.Buffers {
		vars = append(vars, buf.Name)
	}
	vars = append(vars, "err")
	p("\t\t%s := call(-1)\n\t\tif err != nil {\n\t\t\tt.Fatalf(\"rank %%d: %%v\", rank, err)\n\t\t}\n", strings.Join(vars, ", "))
	p("\t\treq := rc.last(t)\n")
	p("\t\tif req.Kind != %s {\n\t\t\tt.Fatalf(\"Kind = %%v\", req.Kind)\n\t\t}\n", kindConst(c))
	wantDT, wantCount, wantOp := "0", "0", "0"
	if d != nil {
		wantDT, wantCount = dtConst(*d), "count"
	}
	if c.Op {
		wantOp = op
	}
	p("\t\tif req.DType != %s || req.Count != %s || req.Op != %s {\n\t\t\tt.Fatalf(\"DType, Count, Op = %%v, %%d, %%v\", req.DType, req.Count, req.Op)\n\t\t}\n", wantDT, wantCount, wantOp)
	if c.Root {
		p("\t\tif req.Root != root {\n\t\t\tt.Fatalf(\"Root = %%d\", req.Root)\n\t\t}\n")
	}
	if c.Peer {
		p("\t\tif req.Peer != peer {\n\t\t\tt.Fatalf(\"Peer = %%d\", req.Peer)\n\t\t}\n")
	}
	var sendBuf, recvBuf string = "nil", "nil"
	for _, buf := range c.Buffers {
		want := "asBytes(" + buf.Name + ")"
		if buf.On == "root" {
			p("\t\twant%s := %s\n\t\tif rank != root {\n\t\t\twant%s = nil\n\t\t}\n", buf.Name, want, buf.Name)
			want = "want" + buf.Name
		}
		if buf.Role != "recv" {
			sendBuf = want
		}
		if buf.Role != "send" {
			recvBuf = want
		}
	}
	p("\t\tsameBytes(t, \"Send\", req.Send, %s)\n\t\tsameBytes(t, \"Recv\", req.Recv, %s)\n", sendBuf, recvBuf)

	// Each buffer one element too long: refused exactly when this rank
	// checks that length against another.
	from := c.CountFrom()
	for i, buf := range c.Buffers {
		checked := "true"
		if buf.On == "root" {
			checked = "rank == root"
		}
		if i == from && buf.Count == "count" {
			// Its length defines count: it is refused only through another
			// buffer this rank checks.
			var others []string
			for j, o := range c.Buffers {
				if j == from {
					continue
				}
				if o.On == "root" {
					others = append(others, "rank == root")
				} else {
					others = append(others, "true")
				}
			}
			if len(others) == 0 {
				checked = "false"
			} else {
				checked = "(" + strings.Join(others, " || ") + ")"
			}
		}
		p("\t\t%s, err = call(%d)\n\t\tif (%s) != errors.Is(err, ErrBufferLength) {\n\t\t\tt.Fatalf(\"%s one element long: %%v\", err)\n\t\t}\n", strings.Repeat("_, ", len(c.Buffers)-1)+"_", i, checked, buf.Name)
		p("\t\tif err != nil {\n\t\t\trc.none(t)\n\t\t}\n\t\trc.reqs = nil\n")
	}
	if c.Root {
		p("\t\troot = size\n\t\tif %s, err := call(-1); err == nil {\n\t\t\tt.Fatal(\"root out of range: no error\")\n\t\t}\n\t\trc.none(t)\n", strings.Repeat("_, ", len(c.Buffers)-1)+"_")
	}
	if c.Peer {
		p("\t\tpeer = rank\n\t\tif %s, err := call(-1); err == nil {\n\t\t\tt.Fatal(\"peer is this rank: no error\")\n\t\t}\n\t\trc.none(t)\n", strings.Repeat("_, ", len(c.Buffers)-1)+"_")
	}
	p("\t}\n")
	if c.Op {
		// An op the dtype lacks (0 is never an op) is refused.
		args[len(c.Buffers)+2] = "0"
		var mk []string
		for _, buf := range c.Buffers {
			n := "count"
			if buf.Count == "count*size" {
				n = "count * size"
			}
			mk = append(mk, fmt.Sprintf("%s := make([]%s, %s)", buf.Name, d.Go, n))
		}
		p("\trc := &recorder{size: size}\n\troot, peer := 0, 1\n\t_, _ = root, peer\n\t%s\n", strings.Join(mk, "\n\t"))
		p("\tif err := %s(%s); !errors.Is(err, core.ErrUnsupported) {\n\t\tt.Fatalf(\"op 0: %%v, want core.ErrUnsupported\", err)\n\t}\n\trc.none(t)\n", name, strings.Join(args, ", "))
	}
	p("}\n\n")
}

func orNil(d *spec.DType) string {
	if d == nil {
		return "byte"
	}
	return d.Go
}
