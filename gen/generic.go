package gen

import (
	"fmt"
	"strings"

	"github.com/dave/jennifer/jen"
	"github.com/gocoll/gocoll/gen/spec"
)

// The generic front: one function per collective that moves data,
// generic over Elem, the spec's element Go types. Each builds the same
// core.Request as the typed function of T's dtype, with the dtype taken
// from T, so it checks, errs, allocates and costs the same.

// genericFiles are the generic front and its test.
func genericFiles(s *spec.Spec) []genFile {
	return []genFile{
		{name: "generic.go", jen: collGeneric(s)},
		{name: "generic_test.go", jen: collGenericTest(s)},
	}
}

// elemTypes are the dtypes the generic front serves: those whose Go type
// no other dtype of the spec shares (a shared one could not say which
// dtype a T means), and the ones left out.
func elemTypes(s *spec.Spec) (in, out []spec.DType) {
	uses := map[string]int{}
	for _, d := range s.DTypes {
		uses[d.Go]++
	}
	for _, d := range s.DTypes {
		if uses[d.Go] == 1 {
			in = append(in, d)
		} else {
			out = append(out, d)
		}
	}
	return in, out
}

// genericName is collective c's generic function.
func genericName(c spec.Collective) string { return c.Title() }

// dtypeOfFunc is the generated function that maps T to its dtype.
const dtypeOfFunc = "dtypeOf"

func collGeneric(s *spec.Spec) *jen.File {
	f := newFile(s, s.Package)
	in, out := elemTypes(s)
	if len(in) == 0 {
		f.Comment("The spec has no element type of its own Go type: no generic front.")
		return f
	}

	var names []string
	for _, d := range in {
		names = append(names, d.Go)
	}
	doc := fmt.Sprintf("Elem is the element types of the spec's dtypes: %s. "+
		"The generic functions (Allreduce[T] and the rest) take slices of any of them "+
		"and run the typed function of T's dtype.", strings.Join(names, ", "))
	if len(out) > 0 {
		var left []string
		for _, d := range out {
			left = append(left, fmt.Sprintf("%s (%s)", d.Name, d.Go))
		}
		doc += fmt.Sprintf(" Left out, because dtypes share their Go type: %s; call their typed functions.", strings.Join(left, ", "))
	}
	for _, line := range wrap(doc, 76) {
		f.Comment(line)
	}
	f.Type().Id("Elem").InterfaceFunc(func(g *jen.Group) {
		var terms []jen.Code
		for _, d := range in {
			terms = append(terms, goType(d))
		}
		g.Union(terms...)
	})

	f.Comment(dtypeOfFunc + " is T's dtype. Elem lists exactly the cases: a T that reaches the")
	f.Comment("panic is a generator bug.")
	f.Func().Id(dtypeOfFunc).Types(jen.Id("T").Id("Elem")).Params().Qual(CorePath, "DType").Block(
		jen.Switch(jen.Id("any").Call(jen.Parens(jen.Op("*").Id("T")).Call(jen.Nil())).Assert(jen.Type())).BlockFunc(func(g *jen.Group) {
			for _, d := range in {
				g.Case(jen.Op("*").Add(goType(d))).Block(jen.Return(jen.Id(dtConst(d))))
			}
		}),
		jen.Panic(jen.Lit(s.Package+": "+dtypeOfFunc+": a type outside Elem")),
	)

	for _, c := range s.Collectives {
		if len(c.Buffers) == 0 {
			continue // moves no data: the one typed function serves
		}
		genericFunc(f, c, in[0])
	}
	return f
}

// genericFunc emits collective c's generic function. Its parameters and
// request are collFunc's for a dtype, with T for the element type and
// dtypeOf[T]() for the dtype; gen's tests compare the two.
func genericFunc(f *jen.File, c spec.Collective, example spec.DType) {
	name := genericName(c)
	for i, para := range []string{
		fmt.Sprintf("%s runs %s on elements of type T: %s[%s] is %s. %s", name, c.Name, name, example.Go, funcName(c, &example), c.Doc),
		fmt.Sprintf("Buffers, arguments and errors are those of the typed function of T's dtype (%s for %s); "+
			"it allocates nothing either.", funcName(c, &example), example.Go),
	} {
		if i > 0 {
			f.Comment("")
		}
		for _, line := range wrap(para, 76) {
			f.Comment(line)
		}
	}

	params := []jen.Code{jen.Id("ctx").Qual("context", "Context"), jen.Id("c").Qual(CorePath, "Comm")}
	var bufs []jen.Code
	for _, b := range c.Buffers {
		bufs = append(bufs, jen.Id(b.Name))
	}
	params = append(params, jen.List(bufs...).Index().Id("T"))
	dict := jen.Dict{
		jen.Id("Kind"):  jen.Id(kindConst(c)),
		jen.Id("DType"): jen.Id(dtypeOfFunc).Index(jen.Id("T")).Call(),
	}
	if count := countField(c); count != nil {
		dict[jen.Id("Count")] = count
	}
	params = argParts(c, params, dict)
	f.Func().Id(name).Types(jen.Id("T").Id("Elem")).Params(params...).Error().Block(
		jen.Return(jen.Qual(CorePath, "Call").Call(jen.Id("ctx"), jen.Id("c"), jen.Qual(CorePath, "Request").Values(dict))),
	)
}

// collGenericTest is the generic front's test: every generic function at
// every Elem type through core/apitest, as the typed functions are, and
// side by side with the typed function of the same dtype.
func collGenericTest(s *spec.Spec) *jen.File {
	f := newFile(s, s.Package)
	in, _ := elemTypes(s)
	f.Comment("genericFuncs is every generic function at every Elem type, bound to byte")
	f.Comment("buffers, each beside the typed function of the same dtype.")
	f.Var().Id("genericFuncs").Op("=").Index().Index(jen.Lit(2)).Qual(APITestPath, "Func").ValuesFunc(func(g *jen.Group) {
		for _, c := range s.Collectives {
			if len(c.Buffers) == 0 || len(in) == 0 {
				continue
			}
			bind := "bind" + c.Title()
			for _, d := range in {
				inst := jen.Id(genericName(c)).Index(goType(d))
				g.Line().Values(
					jen.Values(field("Name", jen.Lit(funcName(c, &d))), field("Kind", jen.Id(kindConst(c))), field("DType", jen.Id(dtConst(d))),
						field("Bind", jen.Id(bind).Call(jen.Id(funcName(c, &d))))),
					jen.Values(field("Name", jen.Lit(genericName(c)+"["+d.Go+"]")), field("Kind", jen.Id(kindConst(c))), field("DType", jen.Id(dtConst(d))),
						field("Bind", jen.Id(bind).Call(inst))),
				)
			}
		}
		g.Line()
	})
	f.Func().Id("TestGeneric").Params(jen.Id("t").Op("*").Qual("testing", "T")).Block(
		jen.Id("generic").Op(":=").Make(jen.Index().Qual(APITestPath, "Func"), jen.Lit(0), jen.Len(jen.Id("genericFuncs"))),
		jen.For(jen.List(jen.Id("_"), jen.Id("p")).Op(":=").Range().Id("genericFuncs")).Block(
			jen.Id("generic").Op("=").Append(jen.Id("generic"), jen.Id("p").Index(jen.Lit(1))),
		),
		jen.Qual(APITestPath, "Run").Call(jen.Id("t"), jen.Id("generic")),
		jen.For(jen.List(jen.Id("_"), jen.Id("p")).Op(":=").Range().Id("genericFuncs")).Block(
			jen.Qual(APITestPath, "Same").Call(jen.Id("t"), jen.Id("p").Index(jen.Lit(0)), jen.Id("p").Index(jen.Lit(1))),
		),
	)
	return f
}
