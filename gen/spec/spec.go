// Package spec is the parsed, validated form of a collectives spec
// (spec/collectives.yaml). Generators read only this; they never look at YAML.
package spec

// Spec is a whole collectives spec.
type Spec struct {
	Path        string       // the file it was read from, as given to Load or Parse
	Package     string       // Go package name of the generated typed API
	DTypes      []DType      // in file order
	Ops         []Op         // in file order
	Collectives []Collective // in file order
}

// DType is one element type.
type DType struct {
	Name  string   // spec name: "bfloat16"
	ID    int      // wire id, 1..255
	Size  int      // bytes per element
	Go    string   // Go type: "float32", "BFloat16"
	Accum string   // Go type reductions accumulate in: "float32"
	Class string   // "float", "int", "uint" or "complex"
	Ops   []string // names of the ops it supports
}

// Op is one reduce operation.
type Op struct {
	Name   string // "sum"
	ID     int
	Doc    string
	Finish string // "" or "divide": applied once to the final result
}

// Collective is one collective, described by its shape.
type Collective struct {
	Name    string // "reduce_scatter"
	ID      int
	Doc     string
	Buffers []Buffer
	Op      bool // takes a reduce op
	Root    bool // takes a root rank
	Peer    bool // takes a peer rank (point to point)
	Result  Result
	// Vectors are the per-rank counts and displacements of a vector
	// collective (allgatherv...), in parameter order; none for the others.
	Vectors []Vector
}

// Vector is one []int argument of a vector collective: the per-rank
// element counts of its send or recv buffer's blocks, or their element
// displacements (nil: packed in rank order). Every rank passes the counts;
// displacements are read where the rank passes their buffer.
type Vector struct {
	Name   string // Go parameter name
	Of     string // "send" or "recv": the buffer role whose blocks it describes
	Displs bool   // displacements, not counts
}

// Vector reports whether c takes per-rank counts.
func (c Collective) Vector() bool { return len(c.Vectors) > 0 }

// Buffer is one buffer argument of a collective.
type Buffer struct {
	Name string // Go parameter name
	Role string // "send", "recv" or "inout"
	// "count" or "count*size"; for a vector collective "counts" (one block
	// per rank, as its vectors say), "counts[rank]" (this rank's count of
	// the one counts vector) or "sum(counts)" (all of them, packed).
	Count string
	On    string // "all" or "root": which ranks pass it
}

// Result says what each rank's output holds after the collective.
type Result struct {
	Kind string // none, reduce, concat, root, reduce_block, root_block, transpose, peer
	On   string // "all" or "root"
}

// DType returns the dtype named name.
func (s *Spec) DType(name string) (DType, bool) {
	for _, d := range s.DTypes {
		if d.Name == name {
			return d, true
		}
	}
	return DType{}, false
}

// Op returns the op named name.
func (s *Spec) Op(name string) (Op, bool) {
	for _, o := range s.Ops {
		if o.Name == name {
			return o, true
		}
	}
	return Op{}, false
}

// Supports reports whether d lists op.
func (d DType) Supports(op string) bool {
	for _, o := range d.Ops {
		if o == op {
			return true
		}
	}
	return false
}

// Title is the dtype's name in Go identifiers (DTypeBFloat16,
// AllreduceBFloat16): its Go type when that is an exported type, otherwise
// its name with the first letter upper-cased ("float32" -> "Float32").
func (d DType) Title() string {
	if d.Go != "" && d.Go[0] >= 'A' && d.Go[0] <= 'Z' {
		return d.Go
	}
	return camel(d.Name)
}

// Half reports whether d is a 16-bit float type that reduces in float32.
func (d DType) Half() bool { return d.Go == "BFloat16" || d.Go == "Float16" }

// opTitles names the ops whose Go names are not simply capitalised.
var opTitles = map[string]string{"band": "BAnd", "bor": "BOr", "bxor": "BXor"}

// Title is the op's name in Go identifiers (OpSum, OpBAnd).
func (o Op) Title() string {
	if t, ok := opTitles[o.Name]; ok {
		return t
	}
	return camel(o.Name)
}

// Title is the collective's name in Go identifiers: reduce_scatter ->
// ReduceScatter.
func (c Collective) Title() string { return camel(c.Name) }

// CountFrom returns the index of the buffer the element count is inferred
// from: the first buffer every rank passes whose count is "count", else
// the first every rank passes ("count*size", divided by the size); -1 if
// no buffer is on all ranks, or for a vector collective (whose counts are
// arguments).
func (c Collective) CountFrom() int {
	if c.Vector() {
		return -1
	}
	for i, b := range c.Buffers {
		if b.On == "all" && b.Count == "count" {
			return i
		}
	}
	for i, b := range c.Buffers {
		if b.On == "all" {
			return i
		}
	}
	return -1
}

// camel turns lower_snake into CamelCase.
func camel(s string) string {
	out := make([]byte, 0, len(s))
	up := true
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch == '_' {
			up = true
			continue
		}
		if up && ch >= 'a' && ch <= 'z' {
			ch -= 'a' - 'A'
		}
		up = false
		out = append(out, ch)
	}
	return string(out)
}
