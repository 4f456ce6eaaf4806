package core

import (
	"fmt"
	"sync"
)

// DType identifies an element type by its spec id.
type DType uint8

// Op identifies a reduce operation by its spec id.
type Op uint8

// Kind identifies a collective by its spec id.
type Kind uint8

// DTypeInfo describes a dtype to the runtime.
type DTypeInfo struct {
	Name string // spec name, e.g. "bfloat16"
	Size int    // bytes per element
}

// KindInfo describes a collective to the runtime.
type KindInfo struct {
	Name string // spec name, e.g. "reduce_scatter"
}

var (
	regMu  sync.RWMutex
	dtypes = map[DType]DTypeInfo{}
	ops    = map[Op]string{}
	kinds  = map[Kind]KindInfo{}
)

// RegisterDType records the name and size of id. Generated packages call it
// from init. Registering the same id twice with different information
// panics: two specs disagree on a wire id, and no collective could be trusted.
func RegisterDType(id DType, info DTypeInfo) {
	regMu.Lock()
	defer regMu.Unlock()
	if old, ok := dtypes[id]; ok && old != info {
		panic(fmt.Sprintf("gocoll: dtype id %d registered as %+v and %+v; specs must agree on ids", id, old, info))
	}
	dtypes[id] = info
}

// RegisterOp records the name of a reduce op id; see RegisterDType.
func RegisterOp(id Op, name string) {
	regMu.Lock()
	defer regMu.Unlock()
	if old, ok := ops[id]; ok && old != name {
		panic(fmt.Sprintf("gocoll: op id %d registered as %q and %q; specs must agree on ids", id, old, name))
	}
	ops[id] = name
}

// RegisterKind records the name of a collective id; see RegisterDType.
func RegisterKind(id Kind, info KindInfo) {
	regMu.Lock()
	defer regMu.Unlock()
	if old, ok := kinds[id]; ok && old != info {
		panic(fmt.Sprintf("gocoll: collective id %d registered as %+v and %+v; specs must agree on ids", id, old, info))
	}
	kinds[id] = info
}

// Info reports what is registered for d.
func (d DType) Info() (DTypeInfo, bool) {
	regMu.RLock()
	defer regMu.RUnlock()
	i, ok := dtypes[d]
	return i, ok
}

// Size is the element size in bytes, or 0 for an unregistered dtype.
func (d DType) Size() int {
	i, _ := d.Info()
	return i.Size
}

func (d DType) String() string {
	if i, ok := d.Info(); ok {
		return i.Name
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

func (o Op) String() string {
	regMu.RLock()
	defer regMu.RUnlock()
	if n, ok := ops[o]; ok {
		return n
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

func (k Kind) String() string {
	regMu.RLock()
	defer regMu.RUnlock()
	if i, ok := kinds[k]; ok {
		return i.Name
	}
	return fmt.Sprintf("collective(%d)", uint8(k))
}
