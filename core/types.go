package core

import (
	"fmt"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/gocoll/gocoll/kernel"
)

// DType identifies an element type by its spec id: the number frames and
// shared-memory descriptors carry.
type DType uint8

// Op identifies a reduce operation by its spec id.
type Op uint8

// Type describes an element type to the runtime: everything a backend
// needs to move and reduce it without knowing which spec it came from.
// A generated kernels package builds one per dtype of its spec and
// registers it with RegisterType.
type Type struct {
	ID    DType
	Name  string // spec name, e.g. "bfloat16"
	Size  int    // bytes per element
	Class Class  // what the bytes hold
	// ExpBits and MantBits are the IEEE-style layout of a ClassFloat
	// element, or of each of the two parts of a ClassComplex one: what a
	// tool needs to make values of the type without knowing its Go type.
	ExpBits, MantBits uint8
	// Divide divides n elements at p by nranks in place, rounding once:
	// the finish step of ops whose Finish is FinishDivide. Nil when no op
	// of the type needs it.
	Divide func(p unsafe.Pointer, n, nranks int)

	kernels [256]atomic.Pointer[Kernel] // by op id
}

// Class is what an element's bytes hold.
type Class uint8

const (
	// ClassInt is a two's-complement signed integer.
	ClassInt Class = iota + 1
	// ClassUint is an unsigned integer.
	ClassUint
	// ClassFloat is a binary floating-point number (see Type.ExpBits).
	ClassFloat
	// ClassComplex is two floats, real part first.
	ClassComplex
)

func (c Class) String() string {
	switch c {
	case ClassInt:
		return "int"
	case ClassUint:
		return "uint"
	case ClassFloat:
		return "float"
	case ClassComplex:
		return "complex"
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// Finish is what an op does to a reduction's final result, once.
type Finish uint8

const (
	// FinishNone leaves the result as the kernels made it.
	FinishNone Finish = iota
	// FinishDivide divides the result by the number of ranks (avg): the
	// kernels sum, and the type's Divide runs once on the final result.
	FinishDivide
)

// OpInfo describes a reduce op to the runtime.
type OpInfo struct {
	ID     Op
	Name   string // spec name, e.g. "sum"
	Finish Finish
}

// Kernel is one dtype x op: the kernels that reduce it at each
// instruction-set level, and the finish step the op asks for.
type Kernel struct {
	Type *Type
	Op   *OpInfo
	Impl kernel.Impl
}

// Reduce sets dst to the element-wise reduction of srcs at the active
// level, with r's scratch space (r may be nil). The caller guarantees that
// every src is as long as dst, a whole number of elements, and that none
// partly overlaps dst; a checked Request's buffers are. Reduce does not
// finish: call Finish once on the final result.
func (k *Kernel) Reduce(r *kernel.Reducer, dst []byte, srcs [][]byte) {
	r.Run(k.Impl.Active(), dst, srcs, len(dst)/k.Type.Size)
}

// ReduceAt is Reduce at level l (or the highest level below it that has a
// kernel): the reference the levels are tested against is ReduceAt(Generic).
func (k *Kernel) ReduceAt(l kernel.ISA, r *kernel.Reducer, dst []byte, srcs [][]byte) {
	r.Run(k.Impl.At(l), dst, srcs, len(dst)/k.Type.Size)
}

// Finish completes a reduction of nranks contributions on buf, the final
// result: for an op with a finish step (avg) it divides every element by
// nranks once; for others it does nothing. Call it exactly once per result.
func (k *Kernel) Finish(buf []byte, nranks int) {
	if k.Op.Finish != FinishDivide || len(buf) == 0 {
		return
	}
	k.Type.Divide(unsafe.Pointer(unsafe.SliceData(buf)), len(buf)/k.Type.Size, nranks)
}

// Kernel returns t's kernel for op, or nil when the spec gives t no such op.
func (t *Type) Kernel(op Op) *Kernel { return t.kernels[op].Load() }

// Ops lists the ops t supports, by id.
func (t *Type) Ops() []*OpInfo {
	var ops []*OpInfo
	for i := range t.kernels {
		if k := t.kernels[i].Load(); k != nil {
			ops = append(ops, k.Op)
		}
	}
	return ops
}

func (t *Type) String() string { return t.Name }

var (
	types [256]atomic.Pointer[Type]
	ops   [256]atomic.Pointer[OpInfo]
)

// RegisterType makes t known to the runtime and returns the descriptor
// requests of its id resolve to. Registering an id a second time with the
// same name and size returns the first descriptor (two specs that share a
// built-in dtype share it); with a different name or size it panics: two
// specs disagree on a wire id, and no collective could be trusted.
func RegisterType(t *Type) *Type {
	if t.Size <= 0 || t.Name == "" {
		panic(fmt.Sprintf("gocoll: dtype id %d registered without a name or size", t.ID))
	}
	if types[t.ID].CompareAndSwap(nil, t) {
		return t
	}
	old := types[t.ID].Load()
	if old.Name != t.Name || old.Size != t.Size || old.Class != t.Class || old.ExpBits != t.ExpBits || old.MantBits != t.MantBits {
		panic(fmt.Sprintf("gocoll: dtype id %d registered as %s (%d bytes) and %s (%d bytes); specs must agree on ids",
			t.ID, old.Name, old.Size, t.Name, t.Size))
	}
	if old.Divide == nil && t.Divide != nil {
		old.Divide = t.Divide
	}
	return old
}

// RegisterOp makes o known to the runtime and returns the descriptor its
// id resolves to; see RegisterType for registering an id twice.
func RegisterOp(o *OpInfo) *OpInfo {
	if ops[o.ID].CompareAndSwap(nil, o) {
		return o
	}
	old := ops[o.ID].Load()
	if *old != *o {
		panic(fmt.Sprintf("gocoll: op id %d registered as %+v and %+v; specs must agree on ids", o.ID, *old, *o))
	}
	return old
}

// RegisterKernel gives the registered dtype dt the registered op op,
// reduced by impl, and returns the kernel requests resolve to. A second
// registration of the same pair keeps the first: specs that share a dtype
// and op generate kernels that agree bit for bit.
func RegisterKernel(dt DType, op Op, impl kernel.Impl) *Kernel {
	t, o := LookupType(dt), LookupOp(op)
	if t == nil || o == nil {
		panic(fmt.Sprintf("gocoll: kernel for %v x %v registered before its dtype and op", dt, op))
	}
	if impl[kernel.Generic] == nil {
		panic(fmt.Sprintf("gocoll: kernel for %v x %v has no generic level", t.Name, o.Name))
	}
	if o.Finish == FinishDivide && t.Divide == nil {
		panic(fmt.Sprintf("gocoll: op %v needs %v's Divide, which is nil", o.Name, t.Name))
	}
	k := &Kernel{Type: t, Op: o, Impl: impl}
	if t.kernels[op].CompareAndSwap(nil, k) {
		return k
	}
	return t.kernels[op].Load()
}

// LookupType returns the descriptor registered for id, or nil. It takes no
// lock: the registry is an array of atomic pointers.
func LookupType(id DType) *Type { return types[id].Load() }

// LookupOp returns the descriptor registered for id, or nil.
func LookupOp(id Op) *OpInfo { return ops[id].Load() }

// Types lists every registered dtype, by id.
func Types() []*Type {
	var ts []*Type
	for i := range types {
		if t := types[i].Load(); t != nil {
			ts = append(ts, t)
		}
	}
	return ts
}

// Info reports the descriptor registered for d.
func (d DType) Info() (*Type, bool) {
	t := LookupType(d)
	return t, t != nil
}

// Size is the element size in bytes, or 0 for an unregistered dtype.
func (d DType) Size() int {
	if t := LookupType(d); t != nil {
		return t.Size
	}
	return 0
}

func (d DType) String() string {
	if t := LookupType(d); t != nil {
		return t.Name
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

func (o Op) String() string {
	if i := LookupOp(o); i != nil {
		return i.Name
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// opNames lists the names of t's ops, for errors.
func opNames(t *Type) string {
	var names []string
	for _, o := range t.Ops() {
		names = append(names, o.Name)
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
