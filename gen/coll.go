package gen

import (
	"fmt"
	"strings"

	"github.com/dave/jennifer/jen"
	"github.com/gocoll/gocoll/gen/spec"
)

// collFiles is the typed API package.
func collFiles(s *spec.Spec, kernelsPath string) []genFile {
	files := []genFile{
		{name: "ids.go", jen: collIDs(s, kernelsPath)},
		{name: "api.go", jen: collAPI(s)},
		{name: "tables.go", jen: collTables(s)},
		{name: "coll_test.go", text: collTest(s)},
	}
	if src := halfTypes(s, s.Package, true); src != "" {
		files = append(files, genFile{name: "half.go", text: src})
		files = append(files, genFile{name: "half_test.go", text: halfTest(s, s.Package)})
	}
	return files
}

func qCore(name string) *jen.Statement { return jen.Qual(CorePath, name) }

func dtConst(d spec.DType) string        { return "DType" + d.Title() }
func opConst(o spec.Op) string           { return "Op" + o.Title() }
func kindConst(c spec.Collective) string { return "Kind" + c.Title() }

// goType is the element type as the generated package spells it.
func goType(d spec.DType) *jen.Statement { return jen.Id(d.Go) }

func collIDs(s *spec.Spec, kernelsPath string) *jen.File {
	f := newFile(s, s.Package)
	if kernelsPath != "" {
		// The kernels package registers the spec's dtypes, ops and
		// kernels with core: importing the typed API must be enough.
		f.Anon(kernelsPath)
	}
	f.PackageComment(fmt.Sprintf("Package %s is the typed API of gocoll's collectives, generated from %s:", s.Package, s.Path))
	f.PackageComment("one function per collective and element type, the ids of the element types,")
	f.PackageComment("reduce ops and collectives (registered with package core at init), and the")
	f.PackageComment("tables conformance tests are driven by.")
	f.PackageComment("")
	f.PackageComment("Every function checks its buffers against the collective's shape and its op")
	f.PackageComment("against the element type before any data moves, then hands one core.Request")
	f.PackageComment("to the communicator.")

	f.Comment("Element types, by wire id.")
	f.Const().DefsFunc(func(g *jen.Group) {
		for _, d := range s.DTypes {
			g.Comment(fmt.Sprintf("%s is %s: %d bytes, Go type %s, reduced in %s.", dtConst(d), d.Name, d.Size, d.Go, d.Accum))
			g.Id(dtConst(d)).Qual(CorePath, "DType").Op("=").Lit(d.ID)
		}
	})
	f.Comment("Reduce ops, by wire id.")
	f.Const().DefsFunc(func(g *jen.Group) {
		for _, o := range s.Ops {
			g.Comment(fmt.Sprintf("%s: %s.", opConst(o), o.Doc))
			g.Id(opConst(o)).Qual(CorePath, "Op").Op("=").Lit(o.ID)
		}
	})
	f.Comment("Collectives, by wire id.")
	f.Const().DefsFunc(func(g *jen.Group) {
		for _, c := range s.Collectives {
			for _, line := range wrap(fmt.Sprintf("%s: %s", kindConst(c), c.Doc), 76) {
				g.Comment(line)
			}
			g.Id(kindConst(c)).Qual(CorePath, "Kind").Op("=").Lit(c.ID)
		}
	})
	f.Comment("Supports reports whether the spec lets dtype dt be reduced with op.")
	f.Func().Id("Supports").Params(jen.Id("dt").Qual(CorePath, "DType"), jen.Id("op").Qual(CorePath, "Op")).Bool().Block(
		jen.Switch(jen.Id("dt")).BlockFunc(func(g *jen.Group) {
			for _, d := range s.DTypes {
				var ops []jen.Code
				for _, name := range d.Ops {
					o, _ := s.Op(name)
					ops = append(ops, jen.Id(opConst(o)))
				}
				g.Case(jen.Id(dtConst(d))).Block(
					jen.Switch(jen.Id("op")).Block(jen.Case(ops...).Block(jen.Return(jen.True()))),
				)
			}
		}),
		jen.Return(jen.False()),
	)

	f.Comment("ErrBufferLength marks a call whose buffers do not fit the collective's shape")
	f.Comment("(for example recv shorter than send in an allreduce); errors wrapping it say")
	f.Comment("which buffer and what length it needs.")
	f.Var().Id("ErrBufferLength").Op("=").Qual("errors", "New").Call(jen.Lit(s.Package + ": buffer length does not fit the collective"))

	f.Comment("unsupported is the error for an op dt does not support.")
	f.Func().Id("unsupported").Params(jen.Id("fn").String(), jen.Id("dt").Qual(CorePath, "DType"), jen.Id("op").Qual(CorePath, "Op")).Error().Block(
		jen.Var().Id("ok").Index().String(),
		jen.For(jen.List(jen.Id("_"), jen.Id("o")).Op(":=").Range().Id("Ops")).Block(
			jen.If(jen.Id("Supports").Call(jen.Id("dt"), jen.Id("o").Dot("ID"))).Block(
				jen.Id("ok").Op("=").Append(jen.Id("ok"), jen.Id("o").Dot("Name")),
			),
		),
		jen.Return(jen.Qual("fmt", "Errorf").Call(jen.Lit("%s: %w: %v cannot be reduced with %v; use one of %s"),
			jen.Id("fn"), qCore("ErrUnsupported"), jen.Id("dt"), jen.Id("op"), jen.Qual("strings", "Join").Call(jen.Id("ok"), jen.Lit(", ")))),
	)
	f.Comment("requests recycles the *core.Request each typed call hands to Comm.Do:")
	f.Comment("through the interface the pointer escapes, and a fresh one per call")
	f.Comment("would allocate on every collective.")
	f.Var().Id("requests").Op("=").Qual("sync", "Pool").Values(jen.Dict{
		jen.Id("New"): jen.Func().Params().Any().Block(jen.Return(jen.New(qCore("Request")))),
	})
	f.Comment("do runs req on c through a pooled *core.Request, which Comm.Do must not keep.")
	f.Func().Id("do").Params(jen.Id("ctx").Qual("context", "Context"), jen.Id("c").Qual(CorePath, "Comm"), jen.Id("req").Qual(CorePath, "Request")).Error().Block(
		jen.Id("r").Op(":=").Id("requests").Dot("Get").Call().Assert(jen.Op("*").Qual(CorePath, "Request")),
		jen.Op("*").Id("r").Op("=").Id("req"),
		jen.Id("err").Op(":=").Id("c").Dot("Do").Call(jen.Id("ctx"), jen.Id("r")),
		jen.Op("*").Id("r").Op("=").Qual(CorePath, "Request").Values().Comment("keep no buffers alive from the pool"),
		jen.Id("requests").Dot("Put").Call(jen.Id("r")),
		jen.Return(jen.Id("err")),
	)
	f.Comment("asBytes views s as bytes, without copying; nil stays nil.")
	f.Func().Id("asBytes").Types(jen.Id("T").Any()).Params(jen.Id("s").Index().Id("T")).Index().Byte().Block(
		jen.If(jen.Id("s").Op("==").Nil()).Block(jen.Return(jen.Nil())),
		jen.Var().Id("z").Id("T"),
		jen.Return(jen.Qual("unsafe", "Slice").Call(
			jen.Parens(jen.Op("*").Byte()).Call(jen.Qual("unsafe", "Pointer").Call(jen.Qual("unsafe", "SliceData").Call(jen.Id("s")))),
			jen.Len(jen.Id("s")).Op("*").Int().Call(jen.Qual("unsafe", "Sizeof").Call(jen.Id("z"))),
		)),
	)
	return f
}

// opsList is the doc text listing d's ops.
func opsList(d spec.DType) string { return strings.Join(d.Ops, ", ") }

// countExpr is the element count a buffer must hold, as Go and as prose.
func countExpr(b spec.Buffer) (jen.Code, string) {
	if b.Count == "count*size" {
		return jen.Id("count").Op("*").Id("size"), "count*size"
	}
	return jen.Id("count"), "count"
}

func collAPI(s *spec.Spec) *jen.File {
	f := newFile(s, s.Package)
	for _, c := range s.Collectives {
		if len(c.Buffers) == 0 {
			collFunc(f, s, c, nil)
			continue
		}
		for _, d := range s.DTypes {
			d := d
			collFunc(f, s, c, &d)
		}
	}
	return f
}

// collFunc emits the typed function of collective c for dtype d (nil: the
// collective moves no data and has one function without a dtype).
func collFunc(f *jen.File, s *spec.Spec, c spec.Collective, d *spec.DType) {
	name := c.Title()
	if d != nil {
		name += d.Title()
	}
	// Doc comment: what it is and the spec's doc, then the shape in words.
	var head string
	if d != nil {
		head = fmt.Sprintf("%s runs %s on %s elements. %s", name, c.Name, d.Name, c.Doc)
	} else {
		head = fmt.Sprintf("%s runs %s. %s", name, c.Name, c.Doc)
	}
	paras := []string{head}
	var shape []string
	if len(c.Buffers) > 0 {
		var parts []string
		for _, b := range c.Buffers {
			_, cnt := countExpr(b)
			where := "on every rank"
			if b.On == "root" {
				where = "on the root (other ranks may pass nil; it is not used there)"
			}
			parts = append(parts, fmt.Sprintf("%s holds %s elements %s", b.Name, cnt, where))
		}
		from := c.Buffers[c.CountFrom()]
		def := "len(" + from.Name + ")"
		if from.Count == "count*size" {
			def += "/size"
		}
		shape = append(shape, fmt.Sprintf("With count = %s and size the number of ranks: %s.", def, strings.Join(parts, "; ")))
	}
	if c.Op && d != nil {
		shape = append(shape, fmt.Sprintf("op must be one %s supports: %s; others return an error wrapping core.ErrUnsupported.", d.Name, opsList(*d)))
	}
	if c.Root {
		shape = append(shape, "root is the rank the data comes from or goes to; every rank passes the same root.")
	}
	if c.Peer {
		shape = append(shape, "peer is the other rank, not this one.")
	}
	if len(c.Buffers) > 0 {
		shape = append(shape, "Lengths that do not fit the shape return an error wrapping ErrBufferLength.")
	}
	if len(shape) > 0 {
		paras = append(paras, strings.Join(shape, " "))
	}
	for i, para := range paras {
		if i > 0 {
			f.Comment("")
		}
		for _, line := range wrap(para, 76) {
			f.Comment(line)
		}
	}

	params := []jen.Code{jen.Id("ctx").Qual("context", "Context"), jen.Id("c").Qual(CorePath, "Comm")}
	if len(c.Buffers) > 0 {
		var names []jen.Code
		for _, b := range c.Buffers {
			names = append(names, jen.Id(b.Name))
		}
		params = append(params, jen.List(names...).Index().Add(goType(*d)))
	}
	if c.Op {
		params = append(params, jen.Id("op").Qual(CorePath, "Op"))
	}
	if c.Root {
		params = append(params, jen.Id("root").Int())
	}
	if c.Peer {
		params = append(params, jen.Id("peer").Int())
	}

	needSize, needRank := c.Root || c.Peer, c.Peer
	for _, b := range c.Buffers {
		if b.Count == "count*size" {
			needSize = true
		}
		if b.On == "root" {
			needRank = true
		}
	}
	lenErr := func(format string, args ...jen.Code) jen.Code {
		return jen.Return(jen.Qual("fmt", "Errorf").Call(append([]jen.Code{jen.Lit(name + ": %w: " + format), jen.Id("ErrBufferLength")}, args...)...))
	}

	f.Func().Id(name).Params(params...).Error().BlockFunc(func(g *jen.Group) {
		if c.Op {
			g.If(jen.Op("!").Id("Supports").Call(jen.Id(dtConst(*d)), jen.Id("op"))).Block(
				jen.Return(jen.Id("unsupported").Call(jen.Lit(name), jen.Id(dtConst(*d)), jen.Id("op"))),
			)
		}
		if needSize {
			g.Id("size").Op(":=").Id("c").Dot("Size").Call()
		}
		if needRank {
			g.Id("rank").Op(":=").Id("c").Dot("Rank").Call()
		}
		if c.Root {
			g.If(jen.Id("root").Op("<").Lit(0).Op("||").Id("root").Op(">=").Id("size")).Block(
				jen.Return(jen.Qual("fmt", "Errorf").Call(jen.Lit(name+": root %d is not a rank of this %d-rank communicator; pass a root in [0, %d)"), jen.Id("root"), jen.Id("size"), jen.Id("size"))),
			)
		}
		if c.Peer {
			g.If(jen.Id("peer").Op("<").Lit(0).Op("||").Id("peer").Op(">=").Id("size").Op("||").Id("peer").Op("==").Id("rank")).Block(
				jen.Return(jen.Qual("fmt", "Errorf").Call(jen.Lit(name+": peer %d must be another rank of this %d-rank communicator (this is rank %d)"), jen.Id("peer"), jen.Id("size"), jen.Id("rank"))),
			)
		}
		countArg := jen.Lit(0)
		if len(c.Buffers) > 0 {
			from := c.Buffers[c.CountFrom()]
			if from.Count == "count*size" {
				g.If(jen.Len(jen.Id(from.Name)).Op("%").Id("size").Op("!=").Lit(0)).Block(
					lenErr("len("+from.Name+") = %d is not a multiple of the %d ranks", jen.Len(jen.Id(from.Name)), jen.Id("size")),
				)
				g.Id("count").Op(":=").Len(jen.Id(from.Name)).Op("/").Id("size")
			} else {
				g.Id("count").Op(":=").Len(jen.Id(from.Name))
			}
			countArg = jen.Id("count")
			for i, b := range c.Buffers {
				if i == c.CountFrom() {
					continue
				}
				want, wantText := countExpr(b)
				check := jen.If(jen.Len(jen.Id(b.Name)).Op("!=").Add(want)).Block(
					lenErr("len("+b.Name+") = %d, want "+wantText+" = %d", jen.Len(jen.Id(b.Name)), want),
				)
				if b.On == "root" {
					g.If(jen.Id("rank").Op("==").Id("root")).Block(check).Else().Block(
						jen.Comment("Not used off the root: hand the backend nil, as core.Request says."),
						jen.Id(b.Name).Op("=").Nil(),
					)
				} else {
					g.Add(check)
				}
			}
		}
		dict := jen.Dict{jen.Id("Kind"): jen.Id(kindConst(c))}
		if d != nil {
			dict[jen.Id("DType")] = jen.Id(dtConst(*d))
			dict[jen.Id("Count")] = countArg
		}
		if c.Op {
			dict[jen.Id("Op")] = jen.Id("op")
		}
		if c.Root {
			dict[jen.Id("Root")] = jen.Id("root")
		}
		if c.Peer {
			dict[jen.Id("Peer")] = jen.Id("peer")
		}
		for _, b := range c.Buffers {
			if b.Role == "send" || b.Role == "inout" {
				dict[jen.Id("Send")] = jen.Id("asBytes").Call(jen.Id(b.Name))
			}
			if b.Role == "recv" || b.Role == "inout" {
				dict[jen.Id("Recv")] = jen.Id("asBytes").Call(jen.Id(b.Name))
			}
		}
		g.Return(jen.Id("do").Call(jen.Id("ctx"), jen.Id("c"), jen.Qual(CorePath, "Request").Values(dict)))
	})
}

func collTables(s *spec.Spec) *jen.File {
	f := newFile(s, s.Package)
	f.Comment("Case is one combination conformance tests run: a collective, an element type")
	f.Comment("and, for collectives that reduce, an op (0 otherwise). Collectives that move")
	f.Comment("no data have one case with DType 0.")
	f.Type().Id("Case").Struct(
		jen.Id("Kind").Qual(CorePath, "Kind"),
		jen.Id("DType").Qual(CorePath, "DType"),
		jen.Id("Op").Qual(CorePath, "Op"),
	)
	f.Comment("Cases lists every combination the spec allows, in spec order.")
	f.Var().Id("Cases").Op("=").Index().Id("Case").ValuesFunc(func(g *jen.Group) {
		for _, c := range s.Collectives {
			if len(c.Buffers) == 0 {
				g.Values(jen.Id(kindConst(c)), jen.Lit(0), jen.Lit(0))
				continue
			}
			for _, d := range s.DTypes {
				if !c.Op {
					g.Values(jen.Id(kindConst(c)), jen.Id(dtConst(d)), jen.Lit(0))
					continue
				}
				for _, on := range d.Ops {
					o, _ := s.Op(on)
					g.Values(jen.Id(kindConst(c)), jen.Id(dtConst(d)), jen.Id(opConst(o)))
				}
			}
		}
	})

	f.Comment("CollectiveInfo is a collective's shape, exactly as the spec gives it.")
	f.Type().Id("CollectiveInfo").Struct(
		jen.Id("Kind").Qual(CorePath, "Kind"),
		jen.Id("Name").String().Comment("spec name, e.g. \"reduce_scatter\""),
		jen.Id("Doc").String(),
		jen.Id("Buffers").Index().Id("BufferInfo").Comment("in parameter order"),
		jen.Id("Op").Bool().Comment("takes a reduce op"),
		jen.Id("Root").Bool().Comment("takes a root rank"),
		jen.Id("Peer").Bool().Comment("takes a peer rank (point to point)"),
		jen.Id("Result").Id("ResultInfo"),
	)
	f.Comment("BufferInfo is one buffer of a collective.")
	f.Type().Id("BufferInfo").Struct(
		jen.Id("Name").String().Comment("parameter name"),
		jen.Id("Role").String().Comment("\"send\", \"recv\" or \"inout\": core.Request's Send, Recv or both"),
		jen.Id("Count").String().Comment("\"count\" or \"count*size\" elements"),
		jen.Id("On").String().Comment("\"all\" or \"root\": which ranks pass it (others pass nil)"),
	)
	f.Comment("ResultInfo says what each rank's output holds afterwards; Kind is one of")
	f.Comment("none, reduce, concat, root, reduce_block, root_block, transpose, peer (see the spec).")
	f.Type().Id("ResultInfo").Struct(
		jen.Id("Kind").String(),
		jen.Id("On").String().Comment("\"all\" or \"root\": the ranks whose output holds it"),
	)
	f.Comment("Collectives lists every collective's shape, in spec order.")
	f.Var().Id("Collectives").Op("=").Index().Id("CollectiveInfo").ValuesFunc(func(g *jen.Group) {
		for _, c := range s.Collectives {
			var bufs []jen.Code
			for _, b := range c.Buffers {
				bufs = append(bufs, jen.Values(jen.Dict{
					jen.Id("Name"): jen.Lit(b.Name), jen.Id("Role"): jen.Lit(b.Role),
					jen.Id("Count"): jen.Lit(b.Count), jen.Id("On"): jen.Lit(b.On),
				}))
			}
			dict := jen.Dict{
				jen.Id("Kind"): jen.Id(kindConst(c)), jen.Id("Name"): jen.Lit(c.Name), jen.Id("Doc"): jen.Lit(c.Doc),
				jen.Id("Result"): jen.Id("ResultInfo").Values(jen.Dict{jen.Id("Kind"): jen.Lit(c.Result.Kind), jen.Id("On"): jen.Lit(c.Result.On)}),
			}
			if len(bufs) > 0 {
				dict[jen.Id("Buffers")] = jen.Index().Id("BufferInfo").Values(bufs...)
			}
			if c.Op {
				dict[jen.Id("Op")] = jen.True()
			}
			if c.Root {
				dict[jen.Id("Root")] = jen.True()
			}
			if c.Peer {
				dict[jen.Id("Peer")] = jen.True()
			}
			g.Values(dict)
		}
	})

	f.Comment("DTypeInfo describes an element type of the spec.")
	f.Type().Id("DTypeInfo").Struct(
		jen.Id("ID").Qual(CorePath, "DType"),
		jen.Id("Name").String(),
		jen.Id("Size").Int().Comment("bytes per element"),
		jen.Id("Class").String().Comment("\"float\", \"int\" or \"uint\""),
		jen.Id("Ops").Index().Qual(CorePath, "Op").Comment("the ops it supports"),
	)
	f.Comment("DTypes lists the spec's element types, in spec order.")
	f.Var().Id("DTypes").Op("=").Index().Id("DTypeInfo").ValuesFunc(func(g *jen.Group) {
		for _, d := range s.DTypes {
			var ops []jen.Code
			for _, on := range d.Ops {
				o, _ := s.Op(on)
				ops = append(ops, jen.Id(opConst(o)))
			}
			g.Values(jen.Dict{
				jen.Id("ID"): jen.Id(dtConst(d)), jen.Id("Name"): jen.Lit(d.Name), jen.Id("Size"): jen.Lit(d.Size),
				jen.Id("Class"): jen.Lit(d.Class), jen.Id("Ops"): jen.Index().Qual(CorePath, "Op").Values(ops...),
			})
		}
	})
	f.Comment("OpInfo describes a reduce op of the spec.")
	f.Type().Id("OpInfo").Struct(
		jen.Id("ID").Qual(CorePath, "Op"),
		jen.Id("Name").String(),
		jen.Id("Doc").String(),
		jen.Id("Finish").String().Comment("\"divide\": the result is divided by the number of ranks once; \"\" otherwise"),
	)
	f.Comment("Ops lists the spec's reduce ops, in spec order.")
	f.Var().Id("Ops").Op("=").Index().Id("OpInfo").ValuesFunc(func(g *jen.Group) {
		for _, o := range s.Ops {
			dict := jen.Dict{jen.Id("ID"): jen.Id(opConst(o)), jen.Id("Name"): jen.Lit(o.Name), jen.Id("Doc"): jen.Lit(o.Doc)}
			if o.Finish != "" {
				dict[jen.Id("Finish")] = jen.Lit(o.Finish)
			}
			g.Values(dict)
		}
	})
	return f
}

// wrap breaks text into lines of at most width bytes, at spaces.
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
