package gen

import (
	"fmt"
	"strings"

	"github.com/dave/jennifer/jen"
	"github.com/gocoll/gocoll/gen/spec"
)

// collFiles is the typed API package; kernelsPath is the kernels package
// it imports to register the spec's kernels.
func collFiles(s *spec.Spec, kernelsPath string) []genFile {
	return append([]genFile{
		{name: "ids.go", jen: collIDs(s, kernelsPath)},
		{name: "api.go", jen: collAPI(s)},
		{name: "start.go", jen: startFile(s)},
		{name: "coll_test.go", jen: collTest(s)},
	}, genericFiles(s)...)
}

func qCore(name string) *jen.Statement { return jen.Qual(CorePath, name) }

func dtConst(d spec.DType) string        { return "DType" + d.Title() }
func opConst(o spec.Op) string           { return "Op" + o.Title() }
func kindConst(c spec.Collective) string { return "Kind" + c.Title() }

// goType is the element type as the generated package spells it.
func goType(d spec.DType) *jen.Statement { return jen.Id(d.Go) }

func collIDs(s *spec.Spec, kernelsPath string) *jen.File {
	f := newFile(s, s.Package)
	// The kernels package registers the spec's dtypes, ops and kernels
	// with core: importing the typed API must be enough.
	f.Anon(kernelsPath)
	for _, line := range wrap(fmt.Sprintf("Package %s is the typed API of gocoll's collectives for %s: "+
		"one function per collective and element type of the spec, and the ids of its element types and reduce ops. "+
		"Importing it registers the spec's element types, ops and kernels with the runtime.", s.Package, s.Path), 76) {
		f.PackageComment(line)
	}
	f.PackageComment("")
	f.PackageComment("A function derives the request's element count from its buffers and hands")
	f.PackageComment("one core.Request to the communicator, which checks it before any data moves")
	f.PackageComment("(core.Check: the op against the element type, every buffer's exact length")
	f.PackageComment("against the collective's shape, root and peer against the ranks). A call")
	f.PackageComment("that fails the check returns its error on this rank, and its peers fail")
	f.PackageComment("too instead of waiting.")

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
	f.Comment("The spec's collectives: the runtime's, by their ids there.")
	f.Const().DefsFunc(func(g *jen.Group) {
		for _, c := range s.Collectives {
			for _, line := range wrap(fmt.Sprintf("%s: %s", kindConst(c), c.Doc), 76) {
				g.Comment(line)
			}
			g.Id(kindConst(c)).Op("=").Qual(CorePath, kindConst(c))
		}
	})
	for _, d := range s.DTypes {
		if !d.Half() {
			continue
		}
		for _, line := range wrap(fmt.Sprintf("%s is package half's, so that the typed packages of every spec pass the same type.", d.Go), 76) {
			f.Comment(line)
		}
		f.Type().Id(d.Go).Op("=").Qual(HalfPath, d.Go)
		fn := d.Go + "FromFloat32"
		for _, line := range wrap(fmt.Sprintf("%s rounds v to the nearest %s, ties to even: half.%s.", fn, d.Name, fn), 76) {
			f.Comment(line)
		}
		f.Func().Id(fn).Params(jen.Id("v").Float32()).Id(d.Go).Block(jen.Return(jen.Qual(HalfPath, fn).Call(jen.Id("v"))))
	}
	f.Comment("ErrBufferLength is core.ErrBufferLength: the communicator's check wraps it")
	f.Comment("when a buffer does not hold what the collective's shape asks for, and says")
	f.Comment("which buffer and what length it needs.")
	f.Var().Id("ErrBufferLength").Op("=").Qual(CorePath, "ErrBufferLength")

	f.Comment("Supports reports whether the runtime can reduce dt with op: whether a spec")
	f.Comment("registered with it (this one or another) gives dt that op. The communicator's")
	f.Comment("check refuses any other pair with core.ErrUnsupported.")
	f.Func().Id("Supports").Params(jen.Id("dt").Qual(CorePath, "DType"), jen.Id("op").Qual(CorePath, "Op")).Bool().Block(
		jen.Id("t").Op(":=").Qual(CorePath, "LookupType").Call(jen.Id("dt")),
		jen.Return(jen.Id("t").Op("!=").Nil().Op("&&").Id("t").Dot("Kernel").Call(jen.Id("op")).Op("!=").Nil()),
	)
	return f
}

// countExpr is the element count a buffer holds, in prose.
func countExpr(b spec.Buffer) string {
	if b.Count == "count*size" {
		return "count*size"
	}
	return "count"
}

func collAPI(s *spec.Spec) *jen.File {
	f := newFile(s, s.Package)
	for _, c := range s.Collectives {
		if len(c.Buffers) == 0 {
			collFunc(f, c, nil)
			continue
		}
		for _, d := range s.DTypes {
			collFunc(f, c, &d)
		}
	}
	return f
}

// funcName is the typed function of collective c for dtype d (nil: the
// collective moves no data).
func funcName(c spec.Collective, d *spec.DType) string {
	if d == nil {
		return c.Title()
	}
	return c.Title() + d.Title()
}

// collFunc emits the typed function of collective c for dtype d (nil: the
// collective moves no data and has one function without a dtype). It
// checks nothing itself: the communicator's check (core.Check) does, the
// same on every rank, and tells the peers when it refuses a call.
func collFunc(f *jen.File, c spec.Collective, d *spec.DType) {
	name := funcName(c, d)
	var paras []string
	if d != nil {
		paras = append(paras, fmt.Sprintf("%s runs %s on %s elements. %s", name, c.Name, d.Name, c.Doc))
	} else {
		paras = append(paras, fmt.Sprintf("%s runs %s. %s", name, c.Name, c.Doc))
	}
	var shape []string
	if c.Vector() {
		shape = append(shape, vectorDoc(c))
	} else if len(c.Buffers) > 0 {
		var parts []string
		for _, b := range c.Buffers {
			where := "on every rank"
			if b.On == "root" {
				where = "on the root (the other ranks may pass nil: it is not used there)"
			}
			parts = append(parts, fmt.Sprintf("%s holds %s elements %s", b.Name, countExpr(b), where))
		}
		from := c.Buffers[c.CountFrom()]
		def := "len(" + from.Name + ")"
		if from.Count == "count*size" {
			def += "/size"
		}
		shape = append(shape, fmt.Sprintf("With count = %s and size the number of ranks: %s.", def, strings.Join(parts, "; ")))
	}
	if c.Op && d != nil {
		shape = append(shape, fmt.Sprintf("op is one of the ops %s has: %s.", d.Name, strings.Join(d.Ops, ", ")))
	}
	if c.Root {
		shape = append(shape, "root is the rank the data comes from or goes to; every rank passes the same root.")
	}
	if c.Peer {
		shape = append(shape, "peer is the other rank.")
	}
	if len(shape) > 0 {
		paras = append(paras, strings.Join(shape, " "))
	}
	var errs []string
	if len(c.Buffers) > 0 {
		errs = append(errs, "a buffer whose length does not fit returns an error wrapping ErrBufferLength")
	}
	if c.Op && d != nil {
		errs = append(errs, fmt.Sprintf("an op %s lacks one wrapping core.ErrUnsupported", d.Name))
	}
	if c.Root || c.Peer {
		errs = append(errs, "a rank out of range one wrapping core.ErrInvalid")
	}
	if c.Vector() {
		errs = append(errs, "counts or displacements that are not one per rank, are negative or make blocks overlap one wrapping core.ErrInvalid")
	}
	if len(errs) > 0 {
		paras = append(paras, "The communicator checks the call before any data moves: "+strings.Join(errs, ", ")+
			"; the peers of a rank that fails the check fail too instead of waiting.")
	} else {
		paras = append(paras, "Errors are the communicator's.")
	}
	for i, para := range paras {
		if i > 0 {
			f.Comment("")
		}
		for _, line := range wrap(para, 76) {
			f.Comment(line)
		}
	}

	params, dict := callParts(c, d, jen.Qual(CorePath, "Comm"))
	f.Func().Id(name).Params(params...).Error().Block(
		jen.Return(jen.Qual(CorePath, "Call").Call(jen.Id("ctx"), jen.Id("c"), jen.Qual(CorePath, "Request").Values(dict))),
	)
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
