package gen

import (
	"github.com/dave/jennifer/jen"
	"github.com/gocoll/gocoll/gen/spec"
)

// collTest is the typed API's test: the spec's functions, shapes and
// dtypes as tables that core/apitest checks against the runtime.
func collTest(s *spec.Spec) *jen.File {
	f := newFile(s, s.Package)
	ctxT := jen.Qual("context", "Context")
	comm := jen.Qual(CorePath, "Comm")

	f.Comment("funcs is every typed function of the spec, bound to byte buffers.")
	f.Var().Id("funcs").Op("=").Index().Qual(APITestPath, "Func").ValuesFunc(func(g *jen.Group) {
		for _, c := range s.Collectives {
			if len(c.Buffers) == 0 {
				g.Line().Values(field("Name", jen.Lit(funcName(c, nil))), field("Kind", jen.Id(kindConst(c))),
					field("Bind", jen.Id("bind"+c.Title()).Call(jen.Id(funcName(c, nil)))))
				continue
			}
			for _, d := range s.DTypes {
				g.Line().Values(field("Name", jen.Lit(funcName(c, &d))), field("Kind", jen.Id(kindConst(c))), field("DType", jen.Id(dtConst(d))),
					field("Bind", jen.Id("bind"+c.Title()).Call(jen.Id(funcName(c, &d)))))
			}
		}
		g.Line()
	})

	f.Comment("shapes is every collective as the spec describes it, by the spec's id.")
	f.Var().Id("shapes").Op("=").Index().Qual(APITestPath, "Shape").ValuesFunc(func(g *jen.Group) {
		for _, c := range s.Collectives {
			sh := []jen.Code{field("Name", jen.Lit(c.Name))}
			for _, flag := range []struct {
				on   bool
				name string
			}{{c.Op, "Op"}, {c.Root, "Root"}, {c.Peer, "Peer"}} {
				if flag.on {
					sh = append(sh, field(flag.name, jen.True()))
				}
			}
			for _, b := range c.Buffers {
				extent := qCore(extentConsts[b.Count])
				side := "Recv"
				if b.Role == "send" {
					side = "Send"
				}
				sh = append(sh, field(side, extent))
				if b.On == "root" {
					sh = append(sh, field(side+"RootOnly", jen.True()))
				}
				if b.Role == "inout" {
					sh = append(sh, field("SendIsRecv", jen.True()))
				}
			}
			for _, v := range c.Vectors {
				sh = append(sh, field(vectorField(v), jen.True()))
			}
			if r := resultConsts[c.Result.Kind]; r != "ResultNone" {
				sh = append(sh, field("Result", qCore(r)))
			}
			if c.Result.On == "root" {
				sh = append(sh, field("ResultRootOnly", jen.True()))
			}
			g.Line().Values(field("Kind", jen.Lit(c.ID)), field("Shape", qCore("Shape").Values(sh...)))
		}
		g.Line()
	})

	f.Comment("dtypes is every element type of the spec with its ops.")
	f.Var().Id("dtypes").Op("=").Index().Struct(
		jen.Id("id").Qual(CorePath, "DType"),
		jen.Id("name").String(),
		jen.Id("size").Int(),
		jen.Id("ops").Index().Qual(CorePath, "Op"),
	).ValuesFunc(func(g *jen.Group) {
		for _, d := range s.DTypes {
			var ops []jen.Code
			for _, on := range d.Ops {
				o, _ := s.Op(on)
				ops = append(ops, jen.Id(opConst(o)))
			}
			g.Line().Values(jen.Id(dtConst(d)), jen.Lit(d.Name), jen.Lit(d.Size), jen.Index().Qual(CorePath, "Op").Values(ops...))
		}
		g.Line()
	})

	tt := jen.Id("t").Op("*").Qual("testing", "T")
	f.Comment("TestTypedAPI checks that every function hands the communicator the request")
	f.Comment("its collective's shape asks for, leaves every check to it, and allocates")
	f.Comment("nothing.")
	f.Func().Id("TestTypedAPI").Params(tt).Block(jen.Qual(APITestPath, "Run").Call(jen.Id("t"), jen.Id("funcs")))
	f.Comment("TestShapes checks that the spec's collectives are the runtime's.")
	f.Func().Id("TestShapes").Params(tt).Block(jen.Qual(APITestPath, "CheckShapes").Call(jen.Id("t"), jen.Id("shapes")))
	f.Comment("TestRegistry checks that importing the package registered the spec's")
	f.Comment("element types, with their names and sizes, and their ops.")
	f.Func().Id("TestRegistry").Params(tt).Block(
		jen.For(jen.List(jen.Id("_"), jen.Id("d")).Op(":=").Range().Id("dtypes")).Block(
			jen.Id("ty").Op(":=").Qual(CorePath, "LookupType").Call(jen.Id("d").Dot("id")),
			jen.If(jen.Id("ty").Op("==").Nil().Op("||").Id("ty").Dot("Name").Op("!=").Id("d").Dot("name").Op("||").Id("ty").Dot("Size").Op("!=").Id("d").Dot("size")).Block(
				jen.Id("t").Dot("Fatalf").Call(jen.Lit("dtype %d is registered as %+v, want %s of %d bytes"), jen.Id("d").Dot("id"), jen.Id("ty"), jen.Id("d").Dot("name"), jen.Id("d").Dot("size")),
			),
			jen.For(jen.List(jen.Id("_"), jen.Id("op")).Op(":=").Range().Id("d").Dot("ops")).Block(
				jen.If(jen.Op("!").Id("Supports").Call(jen.Id("d").Dot("id"), jen.Id("op"))).Block(
					jen.Id("t").Dot("Errorf").Call(jen.Lit("%s has no kernel for op %v"), jen.Id("d").Dot("name"), jen.Id("op")),
				),
			),
		),
		jen.If(jen.Id("Supports").Call(jen.Lit(0), jen.Lit(0))).Block(jen.Id("t").Dot("Error").Call(jen.Lit("Supports(0, 0) is true"))),
	)

	// One adapter per collective binds its typed functions to byte buffers.
	for _, c := range s.Collectives {
		name := "bind" + c.Title()
		f.Comment(name + " binds the " + c.Title() + " functions to apitest's buffers.")
		if len(c.Buffers) == 0 {
			f.Func().Id(name).Params(jen.Id("f").Func().Params(ctxT, comm).Error()).Qual(APITestPath, "Bind").Block(
				jen.Return(jen.Func().Params(jen.Op("*").Qual(APITestPath, "Args")).Func().Params(ctxT, comm).Error().Block(jen.Return(jen.Id("f")))),
			)
			continue
		}
		ftype := []jen.Code{ctxT, comm}
		var mk []jen.Code
		args := []jen.Code{jen.Id("ctx"), jen.Id("c")}
		sendB, recvB := jen.Code(jen.Nil()), jen.Code(jen.Nil())
		for _, b := range c.Buffers {
			ftype = append(ftype, jen.Index().Id("T"))
			n := jen.Id("a").Dot("Recv")
			if b.Role == "send" {
				n = jen.Id("a").Dot("Send")
				sendB = jen.Qual(APITestPath, "Bytes").Call(jen.Id(b.Name))
			} else {
				recvB = jen.Qual(APITestPath, "Bytes").Call(jen.Id(b.Name))
			}
			mk = append(mk, jen.Id(b.Name).Op(":=").Make(jen.Index().Id("T"), n))
			args = append(args, jen.Id(b.Name))
		}
		for _, v := range c.Vectors {
			ftype = append(ftype, jen.Index().Int())
			args = append(args, jen.Id("a").Dot(vectorField(v)))
		}
		if c.Op {
			ftype = append(ftype, qCore("Op"))
			args = append(args, jen.Id("a").Dot("Op"))
		}
		if c.Root {
			ftype = append(ftype, jen.Int())
			args = append(args, jen.Id("a").Dot("Root"))
		}
		if c.Peer {
			ftype = append(ftype, jen.Int())
			args = append(args, jen.Id("a").Dot("Peer"))
		}
		body := append(mk,
			jen.List(jen.Id("a").Dot("SendBytes"), jen.Id("a").Dot("RecvBytes")).Op("=").List(sendB, recvB),
			jen.Return(jen.Func().Params(jen.Id("ctx").Add(ctxT), jen.Id("c").Add(comm)).Error().Block(
				jen.Return(jen.Id("f").Call(args...)),
			)),
		)
		f.Func().Id(name).Types(jen.Id("T").Any()).Params(jen.Id("f").Func().Params(ftype...).Error()).Qual(APITestPath, "Bind").Block(
			jen.Return(jen.Func().Params(jen.Id("a").Op("*").Qual(APITestPath, "Args")).Func().Params(ctxT, comm).Error().Block(body...)),
		)
	}
	return f
}

// field is one key: value of a composite literal. Unlike jen.Dict, a
// literal of fields stays on one line: the tables read one entry a line.
func field(name string, v jen.Code) jen.Code { return jen.Id(name).Op(":").Add(v) }

// extentConsts names core's Extent constant for each buffer count a spec
// may give.
var extentConsts = map[string]string{
	"count": "PerRank", "count*size": "AllRanks", "counts": "Blocks", "counts[rank]": "Mine", "sum(counts)": "Sum",
}

// resultConsts names core's Result constant for each result kind a spec
// may give.
var resultConsts = map[string]string{
	"none": "ResultNone", "reduce": "ResultReduce", "concat": "ResultConcat", "root": "ResultRoot",
	"reduce_block": "ResultReduceBlock", "root_block": "ResultRootBlock", "transpose": "ResultTranspose", "peer": "ResultPeer",
}
