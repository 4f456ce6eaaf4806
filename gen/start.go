package gen

import (
	"fmt"

	"github.com/dave/jennifer/jen"
	"github.com/gocoll/gocoll/gen/spec"
)

// startFile is the typed API's start forms: for every typed function a
// Start one that issues the call without blocking (core.StartCall) and
// returns its handle, and, when the spec has send and recv, SendRecv and
// its start form per dtype (core.SendRecv).
func startFile(s *spec.Spec) *jen.File {
	f := newFile(s, s.Package)
	var send, recv *spec.Collective
	for i, c := range s.Collectives {
		switch c.Name {
		case "send":
			send = &s.Collectives[i]
		case "recv":
			recv = &s.Collectives[i]
		}
		if len(c.Buffers) == 0 {
			startFunc(f, c, nil)
			continue
		}
		for _, d := range s.DTypes {
			startFunc(f, c, &d)
		}
	}
	if send != nil && recv != nil && len(send.Buffers) == 1 && len(recv.Buffers) == 1 {
		for _, d := range s.DTypes {
			sendRecvFuncs(f, *send, *recv, d)
		}
	}
	return f
}

// callParts are the parameters of c's typed function for dtype d (nil for
// a collective without buffers) and the core.Request fields built from
// them; comm is the communicator's type (core.Comm for the blocking form,
// core.Starter for the start form).
func callParts(c spec.Collective, d *spec.DType, comm jen.Code) ([]jen.Code, jen.Dict) {
	params := []jen.Code{jen.Id("ctx").Qual("context", "Context"), jen.Id("c").Add(comm)}
	dict := jen.Dict{jen.Id("Kind"): jen.Id(kindConst(c))}
	if len(c.Buffers) > 0 {
		var names []jen.Code
		for _, b := range c.Buffers {
			names = append(names, jen.Id(b.Name))
		}
		params = append(params, jen.List(names...).Index().Add(goType(*d)))
		dict[jen.Id("DType")] = jen.Id(dtConst(*d))
		if count := countField(c); count != nil {
			dict[jen.Id("Count")] = count
		}
	}
	return argParts(c, params, dict), dict
}

// startFunc emits the start form of c's typed function for dtype d.
func startFunc(f *jen.File, c spec.Collective, d *spec.DType) {
	name := funcName(c, d)
	for _, line := range wrap(fmt.Sprintf("Start%s issues %s without blocking and returns its handle, "+
		"whose Wait returns what %s would have; the call runs after every call issued before it on c. "+
		"The buffers belong to the call until it completes: do not touch them before Wait returns. "+
		"The call is checked here: an invalid one returns its error and no handle, and its peers fail too.", name, name, name), 76) {
		f.Comment(line)
	}
	params, dict := callParts(c, d, jen.Qual(CorePath, "Starter"))
	f.Func().Id("Start"+name).Params(params...).Params(jen.Qual(CorePath, "Handle"), jen.Error()).Block(
		jen.Return(jen.Qual(CorePath, "StartCall").Call(jen.Id("ctx"), jen.Id("c"), jen.Qual(CorePath, "Request").Values(dict))),
	)
}

// sendRecvFuncs emits SendRecv and StartSendRecv for dtype d.
func sendRecvFuncs(f *jen.File, send, recv spec.Collective, d spec.DType) {
	name := "SendRecv" + d.Title()
	for _, line := range wrap(fmt.Sprintf("%s sends send to rank dst and receives recv from rank src as one batch "+
		"(core.Guard.StartBatch), and waits for both: two ranks that exchange messages of any size with it do not deadlock, "+
		"where Send then Recv on both may wait for each other above the eager size. "+
		"dst and src may be the same rank; the ranks they name call %s, or Send and Recv in the batch's order.", name, name), 76) {
		f.Comment(line)
	}
	params := []jen.Code{
		jen.Id("ctx").Qual("context", "Context"), jen.Id("c").Qual(CorePath, "Starter"),
		jen.Id("send").Index().Add(goType(d)), jen.Id("dst").Int(),
		jen.Id("recv").Index().Add(goType(d)), jen.Id("src").Int(),
	}
	args := []jen.Code{jen.Id("ctx"), jen.Id("c"),
		jen.Qual(CorePath, "Request").Values(jen.Dict{
			jen.Id("Kind"): jen.Id(kindConst(send)), jen.Id("DType"): jen.Id(dtConst(d)),
			jen.Id("Count"): jen.Len(jen.Id("send")), jen.Id("Peer"): jen.Id("dst"),
			jen.Id("Send"): jen.Qual(CorePath, "Bytes").Call(jen.Id("send")),
		}),
		jen.Qual(CorePath, "Request").Values(jen.Dict{
			jen.Id("Kind"): jen.Id(kindConst(recv)), jen.Id("DType"): jen.Id(dtConst(d)),
			jen.Id("Count"): jen.Len(jen.Id("recv")), jen.Id("Peer"): jen.Id("src"),
			jen.Id("Recv"): jen.Qual(CorePath, "Bytes").Call(jen.Id("recv")),
		}),
	}
	f.Func().Id(name).Params(params...).Error().Block(
		jen.Return(jen.Qual(CorePath, "SendRecv").Call(args...)),
	)
	for _, line := range wrap(fmt.Sprintf("Start%s is %s's start form: it returns the batch's handle.", name, name), 76) {
		f.Comment(line)
	}
	f.Func().Id("Start"+name).Params(params...).Params(jen.Qual(CorePath, "Handle"), jen.Error()).Block(
		jen.Return(jen.Qual(CorePath, "StartSendRecv").Call(args...)),
	)
}
