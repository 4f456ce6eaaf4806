package spec

import (
	"errors"
	"fmt"
	"go/token"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	ytoken "github.com/goccy/go-yaml/token"
)

// Pos is a position in a spec file.
type Pos struct {
	File   string
	Line   int // 1-based
	Column int // 1-based
}

func (p Pos) String() string { return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column) }

// Error is one problem found in a spec, at a position.
type Error struct {
	Pos Pos
	Msg string // says what is wrong and what to write instead
}

func (e *Error) Error() string { return e.Pos.String() + ": " + e.Msg }

// ErrorList is every problem found in a spec, in file order. Parse returns
// one when the spec is invalid, so that one run reports all the mistakes.
type ErrorList []*Error

func (l ErrorList) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Unwrap returns the individual errors, for errors.As.
func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

// Known vocabularies. Ops, Go types and result kinds carry semantics the
// generators implement, so a spec can only pick from these; everything else
// (names, ids, docs, which dtype supports which op, collective shapes) is
// the spec's to choose.
var (
	// KnownOps maps each reduce op name the generators implement to the
	// dtype classes it applies to.
	KnownOps = map[string][]string{
		"sum":  {"float", "int", "uint", "complex"},
		"prod": {"float", "int", "uint"},
		"min":  {"float", "int", "uint"},
		"max":  {"float", "int", "uint"},
		"band": {"int", "uint"},
		"bor":  {"int", "uint"},
		"bxor": {"int", "uint"},
		"avg":  {"float", "complex"},
	}
	// KnownGoTypes maps each element Go type to its class, size and the
	// accumulator types it may reduce in.
	KnownGoTypes = map[string]GoType{
		"float32":  {"float", 4, []string{"float32"}},
		"float64":  {"float", 8, []string{"float64"}},
		"BFloat16": {"float", 2, []string{"float32"}},
		"Float16":  {"float", 2, []string{"float32"}},
		"int8":     {"int", 1, []string{"int8"}},
		"uint8":    {"uint", 1, []string{"uint8"}},
		"int16":    {"int", 2, []string{"int16"}},
		"uint16":   {"uint", 2, []string{"uint16"}},
		"int32":    {"int", 4, []string{"int32"}},
		"uint32":   {"uint", 4, []string{"uint32"}},
		"int64":    {"int", 8, []string{"int64"}},
		"uint64":   {"uint", 8, []string{"uint64"}},
		// complex64 reduces as its float32 parts: sum and avg only.
		"complex64": {"complex", 8, []string{"complex64"}},
	}
	// ResultKinds lists the result kinds and what a collective needs to
	// have one: "op" (takes a reduce op), "root", "peer", "recv" (a recv or
	// inout buffer).
	ResultKinds = map[string][]string{
		"none":         nil,
		"reduce":       {"op", "recv"},
		"concat":       {"recv"},
		"root":         {"root", "recv"},
		"reduce_block": {"op", "recv"},
		"root_block":   {"root", "recv"},
		"transpose":    {"recv"},
		"peer":         {"peer", "recv"},
	}
	finishes = []string{"divide"}
	roles    = []string{"send", "recv", "inout"}
	counts   = []string{"count", "count*size", "counts", "counts[rank]", "sum(counts)"}
	ons      = []string{"all", "root"}
	classes  = []string{"float", "int", "uint", "complex"}
)

// GoType describes an element Go type the generators know.
type GoType struct {
	Class  string
	Size   int
	Accums []string
}

var (
	snakeName = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	goIdent   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// reservedParams are the typed API's own parameter names.
	reservedParams = []string{"ctx", "c", "op", "root", "peer", "count", "size", "rank", "req"}
)

// Load reads and validates the spec file at path.
func Load(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read spec: %w", err)
	}
	return Parse(path, data)
}

// Parse validates data, the contents of the spec file named filename. On a
// broken spec the error is an ErrorList whose entries carry
// file:line:column and say what to fix.
func Parse(filename string, data []byte) (*Spec, error) {
	p := &parse{file: filename}
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		var ye interface {
			GetToken() *ytoken.Token
			GetMessage() string
		}
		if errors.As(err, &ye) && ye.GetToken() != nil {
			p.errAt(ye.GetToken(), "YAML syntax: %s", ye.GetMessage())
			return nil, p.errs
		}
		return nil, ErrorList{{Pos{filename, 1, 1}, "YAML syntax: " + err.Error()}}
	}
	if len(f.Docs) != 1 || f.Docs[0].Body == nil {
		return nil, ErrorList{{Pos{filename, 1, 1}, "the spec must be one YAML document with the keys package, dtypes, ops and collectives"}}
	}
	s := p.spec(f.Docs[0].Body)
	if len(p.errs) > 0 {
		sort.SliceStable(p.errs, func(i, j int) bool {
			a, b := p.errs[i].Pos, p.errs[j].Pos
			if a.Line != b.Line {
				return a.Line < b.Line
			}
			return a.Column < b.Column
		})
		return nil, p.errs
	}
	s.Path = filename
	return s, nil
}

type parse struct {
	file string
	errs ErrorList
	// opNames is every op name the spec defines, valid or not, so that a
	// broken op is reported once, not again by each dtype that lists it.
	opNames []string
}

// peekName is the name: of mapping n, if it has a string one, for naming
// the mapping in messages before it is validated.
func peekName(n ast.Node) string {
	for {
		a, ok := n.(*ast.AnchorNode)
		if !ok {
			break
		}
		n = a.Value
	}
	m, ok := n.(*ast.MappingNode)
	if !ok {
		return ""
	}
	for _, mv := range m.Values {
		k, ok1 := mv.Key.(*ast.StringNode)
		v, ok2 := mv.Value.(*ast.StringNode)
		if ok1 && ok2 && k.Value == "name" && snakeName.MatchString(v.Value) {
			return v.Value
		}
	}
	return ""
}

func (p *parse) pos(t *ytoken.Token) Pos {
	if t == nil || t.Position == nil {
		return Pos{p.file, 1, 1}
	}
	return Pos{p.file, t.Position.Line, t.Position.Column}
}

func (p *parse) errAt(t *ytoken.Token, format string, args ...any) {
	p.errs = append(p.errs, &Error{p.pos(t), fmt.Sprintf(format, args...)})
}

func (p *parse) errNode(n ast.Node, format string, args ...any) {
	// A mapping is reported at its first key: its own token is a brace or
	// the first colon.
	if m, ok := n.(*ast.MappingNode); ok && len(m.Values) > 0 {
		p.errAt(m.Values[0].Key.GetToken(), format, args...)
		return
	}
	p.errAt(n.GetToken(), format, args...)
}

// unwrap resolves anchors and rejects aliases, tags and merge keys, which a
// spec has no use for and which would hide positions.
func (p *parse) unwrap(n ast.Node) ast.Node {
	for {
		switch v := n.(type) {
		case *ast.AnchorNode:
			n = v.Value
		case *ast.AliasNode:
			p.errNode(n, "aliases (*name) are not supported in a spec: write the value out")
			return nil
		case *ast.TagNode:
			p.errNode(n, "tags (!tag) are not supported in a spec: remove %s", v.Start.Value)
			return nil
		default:
			return n
		}
	}
}

// field is one key of a mapping, with where it was written.
type field struct {
	key   *ytoken.Token
	value ast.Node
}

// mapping checks that n is a mapping whose keys are all in allowed (the
// keys of required must be present) and returns its fields by key. what
// names the mapping in messages, e.g. `dtype "float32"`.
func (p *parse) mapping(n ast.Node, what string, required, optional []string) (map[string]field, bool) {
	n = p.unwrap(n)
	if n == nil {
		return nil, false
	}
	m, ok := n.(*ast.MappingNode)
	if !ok {
		if mv, ok2 := n.(*ast.MappingValueNode); ok2 {
			m = &ast.MappingNode{BaseNode: &ast.BaseNode{}, Start: mv.GetToken(), Values: []*ast.MappingValueNode{mv}}
		} else {
			p.errNode(n, "%s must be a mapping with keys %s, not %s", what, strings.Join(append(append([]string{}, required...), optional...), ", "), kindOf(n))
			return nil, false
		}
	}
	fields := map[string]field{}
	for _, mv := range m.Values {
		k, ok := p.unwrap(mv.Key).(*ast.StringNode)
		if !ok {
			p.errNode(mv.Key, "%s: keys must be plain words, not %s", what, kindOf(mv.Key))
			continue
		}
		if !contains(required, k.Value) && !contains(optional, k.Value) {
			p.errAt(k.GetToken(), "%s: unknown key %q; allowed keys are %s%s", what, k.Value, strings.Join(append(append([]string{}, required...), optional...), ", "), suggest(k.Value, append(append([]string{}, required...), optional...)))
			continue
		}
		if _, dup := fields[k.Value]; dup {
			p.errAt(k.GetToken(), "%s: key %q appears twice; keep one", what, k.Value)
			continue
		}
		fields[k.Value] = field{k.GetToken(), mv.Value}
	}
	at := m.GetToken()
	if len(m.Values) > 0 {
		at = m.Values[0].Key.GetToken()
	}
	for _, r := range required {
		if _, ok := fields[r]; !ok {
			p.errAt(at, "%s: missing key %q; add %s: <%s>", what, r, r, hint(r))
		}
	}
	return fields, true
}

func hint(key string) string {
	switch key {
	case "id":
		return "wire id: gocoll's for its dtypes, ops and collectives; 64..255 for a dtype of this spec"
	case "name":
		return "lower_case name"
	case "size":
		return "bytes per element: 1, 2, 4 or 8"
	case "go":
		return "Go element type, e.g. float32 or BFloat16"
	case "accum":
		return "Go type reductions accumulate in"
	case "class":
		return "float, int, uint or complex"
	case "ops", "dtypes", "collectives", "buffers":
		return "list"
	case "doc":
		return "one-sentence description"
	case "role":
		return "send, recv or inout"
	case "count":
		return "count or count*size; counts, counts[rank] or sum(counts) for a vector collective"
	case "on":
		return "all or root"
	case "kind":
		return "result kind, e.g. reduce"
	case "result":
		return "{kind: ..., on: ...}"
	case "package":
		return "Go package name"
	}
	return "value"
}

func kindOf(n ast.Node) string {
	switch n.(type) {
	case *ast.StringNode, *ast.LiteralNode:
		return "a string"
	case *ast.IntegerNode:
		return "an integer"
	case *ast.FloatNode, *ast.InfinityNode, *ast.NanNode:
		return "a number"
	case *ast.BoolNode:
		return "a boolean"
	case *ast.NullNode:
		return "empty (null)"
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	}
	return n.Type().String()
}

func (p *parse) str(f field, what string) (string, bool) {
	n := p.unwrap(f.value)
	if n == nil {
		return "", false
	}
	switch v := n.(type) {
	case *ast.StringNode:
		return v.Value, true
	case *ast.LiteralNode:
		return v.Value.Value, true
	}
	p.errNode(n, "%s must be a string, not %s", what, kindOf(n))
	return "", false
}

func (p *parse) oneOf(f field, what string, allowed []string) (string, bool) {
	v, ok := p.str(f, what)
	if !ok {
		return "", false
	}
	if !contains(allowed, v) {
		p.errNode(f.value, "%s is %q; it must be one of %s%s", what, v, strings.Join(allowed, ", "), suggest(v, allowed))
		return "", false
	}
	return v, true
}

func (p *parse) integer(f field, what string, lo, hi int) (int, bool) {
	n := p.unwrap(f.value)
	if n == nil {
		return 0, false
	}
	v, ok := n.(*ast.IntegerNode)
	if !ok {
		p.errNode(n, "%s must be an integer in %d..%d, not %s", what, lo, hi, kindOf(n))
		return 0, false
	}
	var i int64
	switch x := v.Value.(type) {
	case int64:
		i = x
	case uint64:
		i = int64(hi) + 1
		if x <= uint64(hi) {
			i = int64(x)
		}
	}
	if i < int64(lo) || i > int64(hi) {
		p.errNode(n, "%s is %s; it must be in %d..%d", what, v.GetToken().Value, lo, hi)
		return 0, false
	}
	return int(i), true
}

func (p *parse) boolean(f field, what string) bool {
	n := p.unwrap(f.value)
	if n == nil {
		return false
	}
	v, ok := n.(*ast.BoolNode)
	if !ok {
		p.errNode(n, "%s must be true or false, not %s", what, kindOf(n))
		return false
	}
	return v.Value
}

func (p *parse) seq(f field, what string) []ast.Node {
	n := p.unwrap(f.value)
	if n == nil {
		return nil
	}
	v, ok := n.(*ast.SequenceNode)
	if !ok {
		p.errNode(n, "%s must be a list, not %s", what, kindOf(n))
		return nil
	}
	return v.Values
}

// name reads a lower_case name.
func (p *parse) name(f field, what string) (string, bool) {
	v, ok := p.str(f, what)
	if ok && !snakeName.MatchString(v) {
		p.errNode(f.value, "%s %q must be lower_case: letters, digits and single underscores, starting with a letter", what, v)
		return v, false
	}
	return v, ok
}

func (p *parse) spec(body ast.Node) *Spec {
	s := &Spec{}
	top, ok := p.mapping(body, "spec", []string{"package", "dtypes", "ops", "collectives"}, nil)
	if !ok {
		return s
	}
	if f, ok := top["package"]; ok {
		if v, ok := p.str(f, "package"); ok {
			if !goIdent.MatchString(v) || token.IsKeyword(v) || strings.ToLower(v) != v {
				p.errNode(f.value, "package %q must be a lower-case Go identifier that is not a keyword, e.g. coll", v)
			}
			s.Package = v
		}
	}
	// Ops first: dtypes refer to them.
	opPos := map[string]bool{}
	if f, ok := top["ops"]; ok {
		names, ids := map[string]Pos{}, map[int]Pos{}
		items := p.seq(f, "ops")
		if _, isSeq := f.value.(*ast.SequenceNode); isSeq && len(items) == 0 {
			p.errNode(f.value, "ops must list at least one reduce op, e.g. - {name: sum, id: 1, doc: ...}")
		}
		for _, n := range items {
			if name := peekName(n); name != "" && !contains(p.opNames, name) {
				p.opNames = append(p.opNames, name)
			}
		}
		for i, n := range items {
			o, ok := p.op(n, i)
			if !ok {
				continue
			}
			pos := p.pos(n.GetToken())
			if prev, dup := names[o.Name]; dup {
				p.errNode(n, "op %q is defined twice (first at line %d); remove one", o.Name, prev.Line)
				continue
			}
			if prev, dup := ids[o.ID]; dup {
				p.errNode(n, "op %q reuses id %d (already used at line %d); ids must be unique", o.Name, o.ID, prev.Line)
			}
			names[o.Name], ids[o.ID] = pos, pos
			opPos[o.Name] = true
			s.Ops = append(s.Ops, o)
		}
	}
	if f, ok := top["dtypes"]; ok {
		names, ids := map[string]Pos{}, map[int]Pos{}
		items := p.seq(f, "dtypes")
		if _, isSeq := f.value.(*ast.SequenceNode); isSeq && len(items) == 0 {
			p.errNode(f.value, "dtypes must list at least one element type")
		}
		for i, n := range items {
			d, ok := p.dtype(n, i, s)
			if !ok {
				continue
			}
			pos := p.pos(n.GetToken())
			if prev, dup := names[d.Name]; dup {
				p.errNode(n, "dtype %q is defined twice (first at line %d); remove one", d.Name, prev.Line)
				continue
			}
			if prev, dup := ids[d.ID]; dup {
				p.errNode(n, "dtype %q reuses id %d (already used at line %d); ids must be unique", d.Name, d.ID, prev.Line)
			}
			for _, e := range s.DTypes {
				if e.Title() == d.Title() {
					p.errNode(n, "dtypes %q and %q would both be called %s in Go; rename one", e.Name, d.Name, d.Title())
				}
			}
			names[d.Name], ids[d.ID] = pos, pos
			s.DTypes = append(s.DTypes, d)
		}
	}
	if f, ok := top["collectives"]; ok {
		names, ids := map[string]Pos{}, map[int]Pos{}
		for i, n := range p.seq(f, "collectives") {
			c, ok := p.collective(n, i)
			if !ok {
				continue
			}
			pos := p.pos(n.GetToken())
			if prev, dup := names[c.Name]; dup {
				p.errNode(n, "collective %q is defined twice (first at line %d); remove one", c.Name, prev.Line)
				continue
			}
			if prev, dup := ids[c.ID]; dup {
				p.errNode(n, "collective %q reuses id %d (already used at line %d); ids must be unique", c.Name, c.ID, prev.Line)
			}
			for _, e := range s.Collectives {
				if e.Title() == c.Title() {
					p.errNode(n, "collectives %q and %q would both be called %s in Go; rename one", e.Name, c.Name, c.Title())
				}
			}
			names[c.Name], ids[c.ID] = pos, pos
			s.Collectives = append(s.Collectives, c)
		}
	}
	return s
}

func (p *parse) op(n ast.Node, i int) (Op, bool) {
	what := fmt.Sprintf("ops[%d]", i)
	if name := peekName(n); name != "" {
		what = fmt.Sprintf("op %q", name)
	}
	fs, ok := p.mapping(n, what, []string{"name", "id", "doc"}, []string{"finish"})
	if !ok {
		return Op{}, false
	}
	var o Op
	good := len(fs) >= 3
	if f, ok := fs["name"]; ok {
		o.Name, ok = p.name(f, what+" name")
		if ok {
			what = fmt.Sprintf("op %q", o.Name)
			if _, known := KnownOps[o.Name]; !known {
				p.errNode(f.value, "unknown op %q: the generators implement %s%s", o.Name, strings.Join(sortedKeys(KnownOps), ", "), suggest(o.Name, sortedKeys(KnownOps)))
				ok = false
			}
		}
		good = good && ok
	}
	if f, ok := fs["id"]; ok {
		o.ID, ok = p.integer(f, what+" id", 1, 255)
		if id, builtin := BuiltinOps[o.Name]; ok && builtin && o.ID != id {
			p.errNode(f.value, "%s id is %d, but the runtime's %s is id %d in every spec; write id: %d", what, o.ID, o.Name, id, id)
			ok = false
		}
		good = good && ok
	}
	if f, ok := fs["doc"]; ok {
		o.Doc, ok = p.str(f, what+" doc")
		good = good && ok
	}
	if f, ok := fs["finish"]; ok {
		o.Finish, ok = p.oneOf(f, what+" finish", finishes)
		good = good && ok
	}
	return o, good
}

func (p *parse) dtype(n ast.Node, i int, s *Spec) (DType, bool) {
	what := fmt.Sprintf("dtypes[%d]", i)
	if name := peekName(n); name != "" {
		what = fmt.Sprintf("dtype %q", name)
	}
	fs, ok := p.mapping(n, what, []string{"name", "id", "size", "go", "accum", "class", "ops"}, nil)
	if !ok {
		return DType{}, false
	}
	var d DType
	good := len(fs) == 7
	if f, ok := fs["name"]; ok {
		d.Name, ok = p.name(f, what+" name")
		if ok {
			what = fmt.Sprintf("dtype %q", d.Name)
		}
		good = good && ok
	}
	if f, ok := fs["id"]; ok {
		d.ID, ok = p.integer(f, what+" id", 1, 255)
		good = good && ok
	}
	if f, ok := fs["size"]; ok {
		d.Size, ok = p.integer(f, what+" size", 1, 8)
		good = good && ok
	}
	if f, ok := fs["class"]; ok {
		d.Class, ok = p.oneOf(f, what+" class", classes)
		good = good && ok
	}
	var gt GoType
	if f, ok := fs["go"]; ok {
		d.Go, ok = p.oneOf(f, what+" go type", sortedKeys(KnownGoTypes))
		if ok {
			gt = KnownGoTypes[d.Go]
			if d.Size != 0 && gt.Size != d.Size {
				p.errNode(f.value, "%s: go type %s is %d bytes but size is %d; make them agree", what, d.Go, gt.Size, d.Size)
				ok = false
			}
			if d.Class != "" && gt.Class != d.Class {
				p.errNode(f.value, "%s: go type %s is of class %s but class is %s; make them agree", what, d.Go, gt.Class, d.Class)
				ok = false
			}
		}
		good = good && ok
	}
	if f, ok := fs["accum"]; ok {
		d.Accum, ok = p.str(f, what+" accum")
		if ok && gt.Class != "" && !contains(gt.Accums, d.Accum) {
			p.errNode(f.value, "%s: accum %q is not supported for go type %s; use %s", what, d.Accum, d.Go, strings.Join(gt.Accums, " or "))
			ok = false
		}
		good = good && ok
	}
	if b, builtin := BuiltinDTypes[d.Name]; builtin {
		if f, ok := fs["id"]; ok && d.ID != 0 && d.ID != b.ID {
			p.errNode(f.value, "%s id is %d, but %s is gocoll's dtype %d in every spec; write id: %d", what, d.ID, d.Name, b.ID, b.ID)
			good = false
		}
		if f, ok := fs["go"]; ok && d.Go != "" && d.Go != b.Go {
			p.errNode(f.value, "%s go type is %s, but gocoll's %s is %s in every spec; write go: %s", what, d.Go, d.Name, b.Go, b.Go)
			good = false
		}
	} else if f, ok := fs["id"]; ok && d.ID != 0 && d.ID < FirstDownstreamID {
		p.errNode(f.value, "%s id is %d, but ids below %d are gocoll's own dtypes'; give a dtype of this spec an id in %d..255", what, d.ID, FirstDownstreamID, FirstDownstreamID)
		good = false
	}
	if f, ok := fs["ops"]; ok {
		seen := map[string]bool{}
		items := p.seq(f, what+" ops")
		if _, isSeq := f.value.(*ast.SequenceNode); isSeq && len(items) == 0 {
			p.errNode(f.value, "%s ops must list at least one op, e.g. [sum]", what)
		}
		for _, on := range items {
			name, ok := p.str(field{value: on}, what+" op")
			if !ok {
				good = false
				continue
			}
			if _, ok := s.Op(name); !ok {
				if !contains(p.opNames, name) {
					p.errNode(on, "%s lists unknown op %q; define it under ops: or use one of %s%s", what, name, strings.Join(p.opNames, ", "), suggest(name, p.opNames))
				}
				good = false
				continue
			}
			if seen[name] {
				p.errNode(on, "%s lists op %q twice; remove one", what, name)
				good = false
				continue
			}
			if d.Class != "" && !contains(KnownOps[name], d.Class) {
				p.errNode(on, "%s: op %q does not apply to class %s (it applies to %s); remove it", what, name, d.Class, strings.Join(KnownOps[name], ", "))
				good = false
				continue
			}
			seen[name] = true
			d.Ops = append(d.Ops, name)
		}
	}
	return d, good
}

func (p *parse) collective(n ast.Node, i int) (Collective, bool) {
	what := fmt.Sprintf("collectives[%d]", i)
	if name := peekName(n); name != "" {
		what = fmt.Sprintf("collective %q", name)
	}
	fs, ok := p.mapping(n, what, []string{"name", "id", "doc", "buffers", "result"}, []string{"op", "root", "peer", "vectors"})
	if !ok {
		return Collective{}, false
	}
	var c Collective
	good := true
	for _, k := range []string{"name", "id", "doc", "buffers", "result"} {
		if _, ok := fs[k]; !ok {
			good = false
		}
	}
	if f, ok := fs["name"]; ok {
		c.Name, ok = p.name(f, what+" name")
		if ok {
			what = fmt.Sprintf("collective %q", c.Name)
		}
		good = good && ok
	}
	if f, ok := fs["id"]; ok {
		c.ID, ok = p.integer(f, what+" id", 1, 255)
		good = good && ok
	}
	if f, ok := fs["doc"]; ok {
		c.Doc, ok = p.str(f, what+" doc")
		good = good && ok
	}
	if f, ok := fs["op"]; ok {
		c.Op = p.boolean(f, what+" op")
	}
	if f, ok := fs["root"]; ok {
		c.Root = p.boolean(f, what+" root")
	}
	if f, ok := fs["peer"]; ok {
		c.Peer = p.boolean(f, what+" peer")
		if c.Peer && c.Root {
			p.errNode(f.value, "%s takes both a root and a peer; a collective is rooted or point to point, not both", what)
			good = false
		}
	}
	if f, ok := fs["vectors"]; ok {
		vs, vok := p.vectors(f, what)
		c.Vectors = vs
		good = good && vok
	}
	var sendish, recvish ast.Node
	if f, ok := fs["buffers"]; ok {
		names := map[string]bool{}
		for j, bn := range p.seq(f, what+" buffers") {
			bw := fmt.Sprintf("%s buffers[%d]", what, j)
			bfs, ok := p.mapping(bn, bw, []string{"name", "role", "count", "on"}, nil)
			if !ok {
				good = false
				continue
			}
			var b Buffer
			bgood := len(bfs) == 4
			if bf, ok := bfs["name"]; ok {
				b.Name, ok = p.str(bf, bw+" name")
				if ok && (!goIdent.MatchString(b.Name) || token.IsKeyword(b.Name) || contains(reservedParams, b.Name) || b.Name == "_") {
					p.errNode(bf.value, "%s name %q must be a Go identifier that is not a keyword nor one of %s", bw, b.Name, strings.Join(reservedParams, ", "))
					ok = false
				}
				if ok && names[b.Name] {
					p.errNode(bf.value, "%s: buffer name %q is used twice; rename one", what, b.Name)
					ok = false
				}
				names[b.Name] = true
				bgood = bgood && ok
			}
			if bf, ok := bfs["role"]; ok {
				b.Role, ok = p.oneOf(bf, bw+" role", roles)
				if ok && b.Role != "recv" {
					if sendish != nil {
						p.errNode(bf.value, "%s has two buffers that send (send or inout); a collective has at most one", what)
						ok = false
					}
					sendish = bf.value
				}
				if ok && b.Role != "send" {
					if recvish != nil {
						p.errNode(bf.value, "%s has two buffers that receive (recv or inout); a collective has at most one", what)
						ok = false
					}
					recvish = bf.value
				}
				bgood = bgood && ok
			}
			if bf, ok := bfs["count"]; ok {
				b.Count, ok = p.oneOf(bf, bw+" count", counts)
				bgood = bgood && ok
			}
			if bf, ok := bfs["on"]; ok {
				b.On, ok = p.oneOf(bf, bw+" on", ons)
				if ok && b.On == "root" && !c.Root {
					p.errNode(bf.value, "%s is on root but %s has no root; add root: true or use on: all", bw, what)
					ok = false
				}
				bgood = bgood && ok
			}
			good = good && bgood
			if bgood {
				c.Buffers = append(c.Buffers, b)
			}
		}
		if good && len(c.Buffers) > 0 && c.CountFrom() < 0 && !c.Vector() {
			p.errNode(f.value, "%s: no buffer is on all ranks, so ranks off the root cannot know the count; put one buffer on: all", what)
			good = false
		}
		if c.Op && sendish == nil && good {
			p.errNode(f.value, "%s takes an op but has no send or inout buffer to reduce", what)
			good = false
		}
	}
	buffersOK := good
	if f, ok := fs["result"]; ok {
		rfs, ok := p.mapping(f.value, what+" result", []string{"kind", "on"}, nil)
		if ok {
			if rf, ok := rfs["kind"]; ok {
				c.Result.Kind, ok = p.oneOf(rf, what+" result kind", sortedKeys(ResultKinds))
				if ok {
					for _, need := range ResultKinds[c.Result.Kind] {
						var have bool
						switch need {
						case "op":
							have = c.Op
						case "root":
							have = c.Root
						case "peer":
							have = c.Peer
						case "recv":
							have = recvish != nil || !buffersOK // a broken buffer is reported already
						}
						if !have {
							fix := "add " + need + ": true"
							if need == "recv" {
								fix = "add a buffer with role recv or inout"
							}
							p.errNode(rf.value, "%s: result kind %s needs %s, which %s lacks; %s", what, c.Result.Kind, need, what, fix)
							ok = false
						}
					}
				}
				good = good && ok
			} else {
				good = false
			}
			if rf, ok := rfs["on"]; ok {
				c.Result.On, ok = p.oneOf(rf, what+" result on", ons)
				if ok && c.Result.On == "root" && !c.Root {
					p.errNode(rf.value, "%s result is on root but %s has no root; add root: true or use on: all", what, what)
					ok = false
				}
				good = good && ok
			} else {
				good = false
			}
		} else {
			good = false
		}
	}
	if c.Op && c.Result.Kind != "" && !contains(ResultKinds[c.Result.Kind], "op") {
		p.errNode(fs["op"].value, "%s takes an op but its result kind %s does not use one; remove op: true or change the result kind", what, c.Result.Kind)
		good = false
	}
	if good {
		if msg := runtimeMismatch(c); msg != "" {
			p.errNode(n, "%s: %s", what, msg)
			good = false
		}
	}
	return c, good
}

// vectors parses a vector collective's counts and displacements:
// {name, of: send|recv, displs: bool}, names distinct Go identifiers.
func (p *parse) vectors(f field, what string) ([]Vector, bool) {
	var vs []Vector
	good := true
	names := map[string]bool{}
	for j, vn := range p.seq(f, what+" vectors") {
		vw := fmt.Sprintf("%s vectors[%d]", what, j)
		vfs, ok := p.mapping(vn, vw, []string{"name", "of"}, []string{"displs"})
		if !ok {
			good = false
			continue
		}
		var v Vector
		vgood := true
		if vf, ok := vfs["name"]; ok {
			v.Name, ok = p.str(vf, vw+" name")
			if ok && (!goIdent.MatchString(v.Name) || token.IsKeyword(v.Name) || contains(reservedParams, v.Name) || names[v.Name]) {
				p.errNode(vf.value, "%s name %q must be a Go identifier, used once, that is not a keyword nor one of %s", vw, v.Name, strings.Join(reservedParams, ", "))
				ok = false
			}
			names[v.Name] = true
			vgood = vgood && ok
		} else {
			vgood = false
		}
		if vf, ok := vfs["of"]; ok {
			v.Of, ok = p.oneOf(vf, vw+" of", []string{"send", "recv"})
			vgood = vgood && ok
		} else {
			vgood = false
		}
		if vf, ok := vfs["displs"]; ok {
			v.Displs = p.boolean(vf, vw+" displs")
		}
		if vgood {
			vs = append(vs, v)
		}
		good = good && vgood
	}
	return vs, good
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// suggest returns ` (did you mean "x"?)` for the closest of options when it
// is close to s.
func suggest(s string, options []string) string {
	best, bestD := "", 3
	for _, o := range options {
		if d := editDistance(strings.ToLower(s), strings.ToLower(o)); d < bestD {
			best, bestD = o, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
