package gen

import (
	"github.com/dave/jennifer/jen"
	"github.com/gocoll/gocoll/gen/spec"
)

// countField is the core.Request Count of a call of c: the length of the
// buffer the count comes from, divided by the number of ranks where that
// buffer holds count*size elements. It is nil when no buffer gives it.
func countField(c spec.Collective) jen.Code {
	from := c.CountFrom()
	if from < 0 {
		return nil
	}
	count := jen.Len(jen.Id(c.Buffers[from].Name))
	if c.Buffers[from].Count == "count*size" {
		count = count.Op("/").Id("c").Dot("Size").Call()
	}
	return count
}

// argParts appends the parameters c takes after its buffers (vectors,
// op, root, peer) to params, and sets in dict the core.Request fields
// they and the buffers fill. The typed, start and generic forms of a
// collective share it, so their requests cannot drift apart.
func argParts(c spec.Collective, params []jen.Code, dict jen.Dict) []jen.Code {
	vectorParts(c, &params, dict)
	if c.Op {
		params = append(params, jen.Id("op").Qual(CorePath, "Op"))
		dict[jen.Id("Op")] = jen.Id("op")
	}
	if c.Root {
		params = append(params, jen.Id("root").Int())
		dict[jen.Id("Root")] = jen.Id("root")
	}
	if c.Peer {
		params = append(params, jen.Id("peer").Int())
		dict[jen.Id("Peer")] = jen.Id("peer")
	}
	for _, b := range c.Buffers {
		field := "Recv" // recv, or inout: the one buffer is Recv, as core.Request says
		if b.Role == "send" {
			field = "Send"
		}
		dict[jen.Id(field)] = jen.Qual(CorePath, "Bytes").Call(jen.Id(b.Name))
	}
	return params
}
