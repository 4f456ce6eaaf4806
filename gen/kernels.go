package gen

import (
	"fmt"
	"strings"

	"github.com/dave/jennifer/jen"
	"github.com/gocoll/gocoll/gen/spec"
)

// kernelFiles is the Go side of package kernels: ISA selection, the byte
// and typed Reduce/Finish API, the dispatch tables and the pure-Go kernels.
func kernelFiles(s *spec.Spec) []genFile {
	files := []genFile{
		{name: "doc.go", text: "// " + Header(s) + "\n\n" + kernelsDoc},
		{name: "isa.go", text: "// " + Header(s) + "\n\n" + isaSource},
		{name: "reduce.go", text: "// " + Header(s) + "\n\n" + reduceSource},
		{name: "tables.go", jen: kernelTables(s)},
		{name: "generic.go", jen: genericKernels(s)},
		{name: "api.go", jen: kernelTypedAPI(s)},
		{name: "kernels_test.go", text: kernelsTest(s)},
		{name: "bench_test.go", text: kernelsBench(s)},
	}
	if src := floatOps(s); src != "" {
		files = append(files, genFile{name: "floatops.go", text: src})
	}
	if src := halfTypes(s, "kernels", true); src != "" {
		files = append(files, genFile{name: "half.go", text: src})
		files = append(files, genFile{name: "half_test.go", text: halfTest(s, "kernels")})
	}
	return files
}

func kdt(d spec.DType) string { return "dt" + d.Title() }
func kop(o spec.Op) string    { return "op" + o.Title() }

// reducesAs is the op whose kernel an op runs: an op with a finish step
// reduces as a sum (avg = sum, then divide once).
func reducesAs(s *spec.Spec, o spec.Op) spec.Op {
	if o.Finish == "divide" {
		if sum, ok := s.Op("sum"); ok {
			return sum
		}
		return spec.Op{Name: "sum"}
	}
	return o
}

func genericName(d spec.DType, o spec.Op) string { return "go" + o.Title() + d.Title() }

func maxIDs(s *spec.Spec) (maxDT, maxOp int) {
	for _, d := range s.DTypes {
		maxDT = max(maxDT, d.ID)
	}
	for _, o := range s.Ops {
		maxOp = max(maxOp, o.ID)
	}
	return
}

func kernelTables(s *spec.Spec) *jen.File {
	f := newFile(s, "kernels")
	f.Comment("Element types and ops of the spec, by wire id (the same ids as the typed")
	f.Comment("API's DType and Op constants).")
	f.Const().DefsFunc(func(g *jen.Group) {
		for _, d := range s.DTypes {
			g.Id(kdt(d)).Qual(CorePath, "DType").Op("=").Lit(d.ID)
		}
		for _, o := range s.Ops {
			g.Id(kop(o)).Qual(CorePath, "Op").Op("=").Lit(o.ID)
		}
	})
	maxDT, maxOp := maxIDs(s)
	f.Const().Defs(
		jen.Comment("numDT and numOp size the dispatch tables: one more than the largest id."),
		jen.Id("numDT").Op("=").Lit(maxDT+1),
		jen.Id("numOp").Op("=").Lit(maxOp+1),
	)
	f.Comment("kernelSpecs lists every dtype x op of the spec with its pure-Go kernel and")
	f.Comment("the op whose assembly kernel it runs.")
	f.Var().Id("kernelSpecs").Op("=").Index().Id("kernelSpec").ValuesFunc(func(g *jen.Group) {
		for _, d := range s.DTypes {
			for _, on := range d.Ops {
				o, _ := s.Op(on)
				r := reducesAs(s, o)
				asmOp := kop(r)
				if r.ID == 0 {
					asmOp = kop(o) // the spec has no sum op to name: ask for the op itself
				}
				g.Values(jen.Id(kdt(d)), jen.Id(kop(o)), jen.Id(asmOp), jen.Id(genericName(d, r)))
			}
		}
	})
	f.Comment("dtSizes is each dtype's element size in bytes (0: not in the spec).")
	f.Var().Id("dtSizes").Op("=").Index(jen.Id("numDT")).Int().Values(jen.DictFunc(func(dd jen.Dict) {
		for _, d := range s.DTypes {
			dd[jen.Id(kdt(d))] = jen.Lit(d.Size)
		}
	}))
	f.Comment("dtNames and opNames are the spec names, for errors.")
	f.Var().Id("dtNames").Op("=").Index(jen.Id("numDT")).String().Values(jen.DictFunc(func(dd jen.Dict) {
		for _, d := range s.DTypes {
			dd[jen.Id(kdt(d))] = jen.Lit(d.Name)
		}
	}))
	f.Var().Id("opNames").Op("=").Index(jen.Id("numOp")).String().Values(jen.DictFunc(func(dd jen.Dict) {
		for _, o := range s.Ops {
			dd[jen.Id(kop(o))] = jen.Lit(o.Name)
		}
	}))
	f.Comment("init registers the spec's dtypes, ops and kernels with package core, which")
	f.Comment("requests resolve them through. Another spec registering an id differently panics there.")
	f.Func().Id("init").Params().BlockFunc(func(g *jen.Group) {
		for _, d := range s.DTypes {
			var div jen.Code = jen.Nil()
			for _, on := range d.Ops {
				if o, _ := s.Op(on); o.Finish == "divide" {
					div = jen.Id("divide" + d.Title())
				}
			}
			dict := jen.Dict{
				jen.Id("ID"): jen.Id(kdt(d)), jen.Id("Name"): jen.Lit(d.Name), jen.Id("Size"): jen.Lit(d.Size), jen.Id("Divide"): div,
				jen.Id("Class"): jen.Qual(CorePath, classConst(d.Class)),
			}
			if e, m := floatLayout(d); e != 0 {
				dict[jen.Id("ExpBits")], dict[jen.Id("MantBits")] = jen.Lit(e), jen.Lit(m)
			}
			g.Qual(CorePath, "RegisterType").Call(jen.Op("&").Qual(CorePath, "Type").Values(dict))
		}
		for _, o := range s.Ops {
			fin := jen.Qual(CorePath, "FinishNone")
			if o.Finish == "divide" {
				fin = jen.Qual(CorePath, "FinishDivide")
			}
			g.Qual(CorePath, "RegisterOp").Call(jen.Op("&").Qual(CorePath, "OpInfo").Values(jen.Dict{
				jen.Id("ID"): jen.Id(kop(o)), jen.Id("Name"): jen.Lit(o.Name), jen.Id("Finish"): fin,
			}))
		}
		g.For(jen.List(jen.Id("_"), jen.Id("s")).Op(":=").Range().Id("kernelSpecs")).Block(
			jen.Var().Id("im").Qual(KernelPath, "Impl"),
			jen.Id("im").Index(jen.Qual(KernelPath, "Generic")).Op("=").Qual(KernelPath, "Func").Call(jen.Id("s").Dot("generic")),
			jen.For(jen.Id("l").Op(":=").Id("AVX2"), jen.Id("l").Op("<=").Id("AVX512"), jen.Id("l").Op("++")).Block(
				jen.If(jen.Id("a").Op(":=").Id("archKernel").Call(jen.Id("l"), jen.Id("s").Dot("dt"), jen.Id("s").Dot("asmOp")), jen.Id("a").Op("!=").Nil()).Block(
					jen.Id("im").Index(jen.Id("l")).Op("=").Qual(KernelPath, "Func").Call(jen.Id("a")),
				),
			),
			jen.Qual(CorePath, "RegisterKernel").Call(jen.Id("s").Dot("dt"), jen.Id("s").Dot("op"), jen.Id("im")),
		)
	})
	f.Comment("finishers divides by the number of ranks, for each dtype x op whose op")
	f.Comment("has a finish step; nil elsewhere.")
	f.Var().Id("finishers").Op("=").Index(jen.Id("numDT")).Index(jen.Id("numOp")).Func().Params(jen.Qual("unsafe", "Pointer"), jen.Int(), jen.Int()).Values(jen.DictFunc(func(dd jen.Dict) {
		for _, d := range s.DTypes {
			inner := jen.Dict{}
			for _, on := range d.Ops {
				o, _ := s.Op(on)
				if o.Finish == "divide" {
					inner[jen.Id(kop(o))] = jen.Id("divide" + d.Title())
				}
			}
			if len(inner) > 0 {
				dd[jen.Id(kdt(d))] = jen.Values(inner)
			}
		}
	}))
	return f
}

// elemLoad and elemStore convert between an element and its accumulator.
// A dereference needs parentheses before a method call.
func elemLoad(d spec.DType, x jen.Code, deref bool) *jen.Statement {
	if d.Half() {
		if deref {
			return jen.Parens(x).Dot("Float32").Call()
		}
		return jen.Add(x).Dot("Float32").Call()
	}
	return jen.Add(x)
}

func elemStore(d spec.DType, acc jen.Code) *jen.Statement {
	if d.Half() {
		return jen.Id(d.Go + "FromFloat32").Call(acc)
	}
	return jen.Add(acc)
}

// foldStep is acc = acc op x, for op name in d's accumulator type.
func foldStep(d spec.DType, op string) jen.Code {
	acc, x := jen.Id("acc"), jen.Id("x")
	if d.Class == "float" {
		bits := "32"
		if d.Accum == "float64" {
			bits = "64"
		}
		helper := map[string]string{"sum": "add", "prod": "mul", "min": "min", "max": "max"}[op]
		return jen.Id("acc").Op("=").Id(helper+bits).Call(acc, x)
	}
	switch op {
	case "sum":
		return jen.Id("acc").Op("+=").Add(x)
	case "prod":
		return jen.Id("acc").Op("*=").Add(x)
	case "min":
		return jen.If(jen.Id("x").Op("<").Id("acc")).Block(jen.Id("acc").Op("=").Id("x"))
	case "max":
		return jen.If(jen.Id("x").Op(">").Id("acc")).Block(jen.Id("acc").Op("=").Id("x"))
	case "band":
		return jen.Id("acc").Op("&=").Add(x)
	case "bor":
		return jen.Id("acc").Op("|=").Add(x)
	case "bxor":
		return jen.Id("acc").Op("^=").Add(x)
	}
	panic("gen: no fold step for op " + op)
}

func genericKernels(s *spec.Spec) *jen.File {
	f := newFile(s, "kernels")
	for _, d := range s.DTypes {
		done := map[string]bool{}
		for _, on := range d.Ops {
			o, _ := s.Op(on)
			r := reducesAs(s, o)
			if done[r.Name] {
				continue
			}
			done[r.Name] = true
			name := genericName(d, r)
			elem := jen.Id(d.Go)
			f.Comment(fmt.Sprintf("%s is the pure-Go %s kernel for %s: dst[i] = srcs[0][i] op ... op srcs[nsrc-1][i],", name, r.Name, d.Name))
			if d.Half() {
				f.Comment("folded left to right in float32 and rounded once.")
			} else {
				f.Comment("folded left to right.")
			}
			f.Func().Id(name).Params(jen.Id("dst").Qual("unsafe", "Pointer"), jen.Id("srcs").Op("*").Qual("unsafe", "Pointer"), jen.List(jen.Id("nsrc"), jen.Id("n")).Int()).Block(
				jen.Id("in").Op(":=").Qual("unsafe", "Slice").Call(jen.Id("srcs"), jen.Id("nsrc")),
				jen.Id("d").Op(":=").Qual("unsafe", "Slice").Call(jen.Parens(jen.Op("*").Add(elem)).Call(jen.Id("dst")), jen.Id("n")),
				jen.Id("s0").Op(":=").Qual("unsafe", "Slice").Call(jen.Parens(jen.Op("*").Add(elem)).Call(jen.Id("in").Index(jen.Lit(0))), jen.Id("n")),
				jen.Id("rest").Op(":=").Id("in").Index(jen.Lit(1), jen.Empty()),
				jen.For(jen.Id("i").Op(":=").Range().Id("d")).Block(
					jen.Id("acc").Op(":=").Add(elemLoad(d, jen.Id("s0").Index(jen.Id("i")), false)),
					jen.Id("off").Op(":=").Uintptr().Call(jen.Id("i")).Op("*").Lit(d.Size),
					jen.For(jen.List(jen.Id("_"), jen.Id("p")).Op(":=").Range().Id("rest")).Block(
						jen.Id("x").Op(":=").Add(elemLoad(d, jen.Op("*").Parens(jen.Op("*").Add(elem)).Call(jen.Qual("unsafe", "Add").Call(jen.Id("p"), jen.Id("off"))), true)),
						foldStep(d, r.Name),
					),
					jen.Id("d").Index(jen.Id("i")).Op("=").Add(elemStore(d, jen.Id("acc"))),
				),
			)
		}
		// The finish step, for dtypes with an op that has one.
		for _, on := range d.Ops {
			o, _ := s.Op(on)
			if o.Finish != "divide" {
				continue
			}
			elem := jen.Id(d.Go)
			f.Comment(fmt.Sprintf("divide%s divides n %s elements at p by nranks, each once (in float32 for 16-bit floats, rounded once).", d.Title(), d.Name))
			f.Func().Id("divide"+d.Title()).Params(jen.Id("p").Qual("unsafe", "Pointer"), jen.List(jen.Id("n"), jen.Id("nranks")).Int()).Block(
				jen.Id("div").Op(":=").Id(d.Accum).Call(jen.Id("nranks")),
				jen.Id("s").Op(":=").Qual("unsafe", "Slice").Call(jen.Parens(jen.Op("*").Add(elem)).Call(jen.Id("p")), jen.Id("n")),
				jen.For(jen.List(jen.Id("i"), jen.Id("v")).Op(":=").Range().Id("s")).Block(
					jen.Id("s").Index(jen.Id("i")).Op("=").Add(elemStore(d, elemLoad(d, jen.Id("v"), false).Op("/").Id("div"))),
				),
			)
			break
		}
	}
	return f
}

// floatOps is the source of the float helpers the kernels use, for the
// accumulator widths in use; "" if there are none.
func floatOps(s *spec.Spec) string {
	widths := map[string]bool{}
	for _, d := range s.DTypes {
		if d.Class == "float" {
			widths[d.Accum] = true
		}
	}
	src := ""
	for _, w := range []string{"float32", "float64"} {
		if widths[w] {
			src += floatHelpers(w)
		}
	}
	if src == "" {
		return ""
	}
	return "// " + Header(s) + "\n\npackage kernels\n\nimport \"math\"\n" + src
}

// floatHelpers is the source of the x86-exact float ops for accumulator
// type t. Go may swap the operands of + and * (they commute), which would
// change which NaN's payload survives; these pin it to x86's rule (the
// first NaN operand, made quiet; the default NaN when both are numbers) so
// that the pure-Go kernels equal the assembly bit for bit.
func floatHelpers(t string) string {
	bits, quiet, dflt, uint := "32", "0x400000", "0xffc00000", "uint32"
	if t == "float64" {
		bits, quiet, dflt, uint = "64", "0x8000000000000", "0xfff8000000000000", "uint64"
	}
	r := func(s string) string {
		out := ""
		for i := 0; i < len(s); i++ {
			if s[i] == '$' {
				switch s[i+1] {
				case 'T':
					out += t
				case 'B':
					out += bits
				case 'Q':
					out += quiet
				case 'D':
					out += dflt
				case 'U':
					out += uint
				}
				i++
				continue
			}
			out += string(s[i])
		}
		return out
	}
	return r(`
// nan$B is the NaN x86 returns for a op b when the result is NaN: a's if a
// is NaN, else b's, made quiet; the default NaN if neither is.
func nan$B(a, b $T) $T {
	if a != a {
		return math.Float$Bfrombits(math.Float$Bbits(a) | $Q)
	}
	if b != b {
		return math.Float$Bfrombits(math.Float$Bbits(b) | $Q)
	}
	return math.Float$Bfrombits($D)
}

// add$B is a + b as x86's ADDS does it.
func add$B(a, b $T) $T {
	if s := a + b; s == s {
		return s
	}
	return nan$B(a, b)
}

// mul$B is a * b as x86's MULS does it.
func mul$B(a, b $T) $T {
	if p := a * b; p == p {
		return p
	}
	return nan$B(a, b)
}

// min$B is the spec's min: the smaller; of -0 and +0, -0; NaN if either is.
func min$B(a, b $T) $T {
	switch {
	case a < b:
		return a
	case b < a:
		return b
	case a == b:
		return math.Float$Bfrombits(math.Float$Bbits(a) | math.Float$Bbits(b))
	}
	return nan$B(a, b)
}

// max$B is the spec's max: the larger; of -0 and +0, +0; NaN if either is.
func max$B(a, b $T) $T {
	switch {
	case a > b:
		return a
	case b > a:
		return b
	case a == b:
		return math.Float$Bfrombits(math.Float$Bbits(a) & math.Float$Bbits(b))
	}
	return nan$B(a, b)
}
`)
}

func kernelTypedAPI(s *spec.Spec) *jen.File {
	f := newFile(s, "kernels")
	for _, d := range s.DTypes {
		elem := jen.Id(d.Go)
		name := "Reduce" + d.Title()
		f.Comment(fmt.Sprintf("%s is Reduce for %s slices: dst[i] = srcs[0][i] op ... op srcs[n-1][i].", name, d.Name))
		f.Comment("dst may be one of srcs (the same slice) but must not partly overlap any.")
		f.Func().Id(name).Params(jen.Id("op").Qual(CorePath, "Op"), jen.Id("dst").Index().Add(elem), jen.Id("srcs").Index().Index().Add(elem)).Error().Block(
			jen.Return(jen.Id("reduceTyped").Call(jen.Id(kdt(d)), jen.Id("op"), jen.Id("dst"), jen.Id("srcs"))),
		)
		hasFinish := false
		for _, on := range d.Ops {
			if o, _ := s.Op(on); o.Finish != "" {
				hasFinish = true
			}
		}
		if hasFinish {
			fname := "Finish" + d.Title()
			f.Comment(fmt.Sprintf("%s is Finish for %s slices: for an op with a finish step (avg) it divides", fname, d.Name))
			f.Comment("every element of buf by nranks once; for other ops it does nothing.")
			f.Func().Id(fname).Params(jen.Id("op").Qual(CorePath, "Op"), jen.Id("buf").Index().Add(elem), jen.Id("nranks").Int()).Error().Block(
				jen.Return(jen.Id("finishTyped").Call(jen.Id(kdt(d)), jen.Id("op"), jen.Id("buf"), jen.Id("nranks"))),
			)
		}
	}
	return f
}

// classConst names core's Class constant for a spec class.
func classConst(class string) string {
	switch class {
	case "int":
		return "ClassInt"
	case "uint":
		return "ClassUint"
	case "complex":
		return "ClassComplex"
	}
	return "ClassFloat"
}

// floatLayout is the exponent and mantissa width of a float dtype (of each
// part of a complex one), from its element size and accumulator: a 2-byte
// float reduced in float32 is bfloat16 when its Go type says so.
func floatLayout(d spec.DType) (exp, mant int) {
	if d.Class != "float" && d.Class != "complex" {
		return 0, 0
	}
	part := d.Size
	if d.Class == "complex" {
		part /= 2
	}
	switch part {
	case 8:
		return 11, 52
	case 4:
		return 8, 23
	case 2:
		if strings.Contains(strings.ToLower(d.Go), "bfloat") {
			return 8, 7
		}
		return 5, 10
	}
	return 0, 0
}
